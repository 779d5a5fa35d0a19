"""A run's ``volumes``: network volumes and dstack's instance volumes; multi-node tasks mount no network volume."""

import pytest
import yaml

from core.specs import SpecError
from runs.configuration import parse_run_spec
from runs.models import Run

TASK = "type: task\nname: train\ncommands: [python train.py]\n"
APPLY = "/api/v1/projects/main/apply/"


def _volumes(text: str) -> list[dict]:
    return parse_run_spec(yaml.safe_load(TASK + text))["volumes"]


def _refused(text: str) -> SpecError:
    with pytest.raises(SpecError) as err:
        parse_run_spec(yaml.safe_load(TASK + text))
    return err.value


@pytest.mark.parametrize(("text", "mounts"), [
    ("volumes: ['/mnt/cache:/cache']", [{"instance_path": "/mnt/cache", "path": "/cache", "optional": False}]),
    ("volumes: [{instance_path: //mnt/cache/, path: /cache/./hf/}]",
     [{"instance_path": "/mnt/cache", "path": "/cache/hf", "optional": False}]),
    ("volumes: [{instance_path: /mnt/cache, path: /cache, optional: true}]",
     [{"instance_path": "/mnt/cache", "path": "/cache", "optional": True}]),
    ("volumes: [{instance_path: /mnt/cache, path: /cache, optional: null}]",
     [{"instance_path": "/mnt/cache", "path": "/cache", "optional": False}]),
    ("volumes: ['data-eu:/data', '/mnt/cache:/cache', {name: [a1, b1], path: /ckpt}]", [
        {"name": ["data-eu"], "path": "/data"},
        {"instance_path": "/mnt/cache", "path": "/cache", "optional": False},
        {"name": ["a1", "b1"], "path": "/ckpt"},
    ]),
])
def test_instance_and_network_volumes_are_normalized(text, mounts):
    assert _volumes(text) == mounts


@pytest.mark.parametrize(("text", "field", "word"), [
    ("volumes: ['mnt/cache:/cache']", "volumes[0]", "invalid name"),  # not absolute: read as a volume name
    ("volumes: ['/mnt/cache:cache']", "volumes[0]", "absolute"),
    ("volumes: ['/mnt/cache:/']", "volumes[0]", "cannot mount"),
    ("volumes: ['/mnt/cache']", "volumes[0]", "/instance/path:/path"),
    ("volumes: [{instance_path: mnt, path: /cache}]", "volumes[0].instance_path", "absolute"),
    ("volumes: [{instance_path: /mnt, path: cache}]", "volumes[0].path", "absolute"),
    ("volumes: [{instance_path: /mnt}]", "volumes[0].path", "required"),
    ("volumes: [{instance_path: null, path: /cache}]", "volumes[0].instance_path", "required"),
    ("volumes: [{instance_path: 5, path: /cache}]", "volumes[0].instance_path", "string"),
    ("volumes: [{instance_path: /mnt, path: /cache, optional: 'yes'}]", "volumes[0].optional", "boolean"),
    ("volumes: [{instance_path: /mnt, path: /cache, mode: ro}]", "volumes[0].mode", "unknown"),
    ("volumes: [{instance_path: /mnt, name: data, path: /cache}]", "volumes[0].name", "not both"),
    ("volumes: ['/mnt/a:/cache', {instance_path: /mnt/b, path: /cache/}]", "volumes[1].path", "twice"),
    ("volumes: ['data:/cache', '/mnt/b:/cache']", "volumes[1].path", "twice"),
])
def test_a_bad_instance_volume_names_the_field(text, field, word):
    err = _refused(text)
    assert err.field == field and word in err.message, err


def test_a_multi_node_task_cannot_mount_a_network_volume():
    err = _refused("nodes: 2\nvolumes: ['/mnt/cache:/cache', 'data-eu:/data']")
    assert err.field == "volumes"
    assert "volumes[1]" in err.message and "network volume" in err.message and "one instance" in err.message
    assert "multi-node" in err.message


def test_a_multi_node_task_can_mount_instance_volumes_and_one_node_a_network_volume():
    multi = parse_run_spec(yaml.safe_load(TASK + "nodes: 4\nvolumes: ['/mnt/cache:/cache']"))
    assert multi["nodes"] == 4 and multi["volumes"][0]["instance_path"] == "/mnt/cache"
    assert _volumes("nodes: 1\nvolumes: ['data-eu:/data']") == [{"name": ["data-eu"], "path": "/data"}]


@pytest.mark.django_db
def test_apply_refuses_a_multi_node_task_with_a_network_volume(project, sim_backend, api):
    text = TASK + "nodes: 2\nvolumes: [{name: [data-eu, data-us], path: /data}]\n"
    response = api.post(APPLY, data=text, content_type="application/yaml")
    assert response.status_code == 400, response.content
    assert response.json()["field"] == "volumes" and "multi-node" in response.json()["detail"]
    assert not Run.objects.exists()


@pytest.mark.django_db
def test_apply_accepts_instance_volumes(project, sim_backend, api):
    text = TASK + "nodes: 2\nvolumes:\n  - /mnt/cache:/cache\n  - {instance_path: /data, path: /data, optional: true}\n"
    response = api.post(APPLY, data=text, content_type="application/yaml")
    assert response.status_code == 202, response.content
    assert Run.objects.get(name="train").spec["volumes"] == [
        {"instance_path": "/mnt/cache", "path": "/cache", "optional": False},
        {"instance_path": "/data", "path": "/data", "optional": True},
    ]
