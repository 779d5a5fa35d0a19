"""Every number in a configuration has a documented range (README "Limits"): outside it, a 400 naming
the field and nothing written, dry run or not."""

import pytest

from configurations.loading import load_document, parse_configuration
from core.models import Event
from core.specs import MAX_CPUS, MAX_DURATION, MAX_GPUS, MAX_NODES, MAX_RETRY_ATTEMPTS, SpecError
from fleets.specs import MAX_BLOCKS
from runs.specs import MAX_REPLICAS
from volumes.specs import MAX_VOLUME_SIZE_GB

APPLY = "/api/v1/projects/main/apply/"
FLEET = "type: fleet\nname: ff\nnodes: 1\n"
TASK = "type: task\nname: tt\ncommands: [x]\n"
SERVICE = "type: service\nname: ss\ncommands: [x]\nport: 8000\n"
VOLUME = "type: volume\nname: vv\nbackend: sim\nregion: eu-west-1\n"
HUGE = "99999999999999999999999"

OUT_OF_RANGE = [
    # (configuration, the field the 400 names)
    ("type: fleet\nname: ff\nnodes: 1001", "nodes"),
    ("type: fleet\nname: ff\nnodes: 0..1001", "nodes"),
    ("type: fleet\nname: ff\nnodes: {min: 1, max: 1001}", "nodes"),
    (f"type: fleet\nname: ff\nnodes: {HUGE}", "nodes"),
    (f"type: fleet\nname: ff\nnodes: '{HUGE}..'", "nodes"),
    (FLEET + "blocks: 1025", "blocks"),
    (FLEET + "blocks: 100000000000000", "blocks"),
    (FLEET + f"blocks: {HUGE}", "blocks"),
    (FLEET + "idle_duration: 366d", "idle_duration"),
    (FLEET + f"idle_duration: {HUGE}w", "idle_duration"),
    (FLEET + f"idle_duration: '{'9' * 5000}'", "idle_duration"),
    (FLEET + "max_price: 10001", "max_price"),
    (FLEET + "resources: {gpu: 65}", "resources.gpu"),
    (FLEET + "resources: {gpu: 'A100:65'}", "resources.gpu"),
    (FLEET + "resources: {gpu: '1..65'}", "resources.gpu"),
    (FLEET + "resources: {gpu: {count: " + HUGE + "}}", "resources.gpu.count"),
    (FLEET + "resources: {gpu: 'A100:70000GB'}", "resources.gpu"),
    (FLEET + "resources: {cpu: 1025}", "resources.cpu"),
    (FLEET + "resources: {cpu: 'x86:2..2000'}", "resources.cpu"),
    (FLEET + "resources: {memory: 65537GB}", "resources.memory"),
    (FLEET + f"resources: {{memory: {HUGE}TB}}", "resources.memory"),
    (FLEET + "resources: {disk: 2000TB}", "resources.disk"),
    (FLEET + "resources: {shm_size: 70000GB}", "resources.shm_size"),
    (TASK + "nodes: 1001", "nodes"),
    (TASK + "max_duration: 366d", "max_duration"),
    (TASK + f"stop_duration: {HUGE}", "stop_duration"),
    (TASK + "retry: {duration: 400d}", "retry.duration"),
    (TASK + "retry: {interval: 53w}", "retry.interval"),
    (TASK + "retry: {max_attempts: 1001}", "retry.max_attempts"),
    (TASK + "retry: {max_attempts: 0}", "retry.max_attempts"),
    (TASK + "max_price: 1.0e+300", "max_price"),
    (SERVICE + "replicas: 1001", "replicas"),
    (SERVICE + "replicas: 1001..1001", "replicas"),
    (SERVICE + "replicas: {min: 2000, max: 2000}", "replicas"),
    (SERVICE.replace("8000", "65536"), "port"),
    (SERVICE.replace("8000", f"'80:{HUGE}'"), "port"),
    (VOLUME + "size: 65537GB", "size"),
    (VOLUME + "size: 99999999999999999999TB", "size"),
    (VOLUME + f"size: {'9' * 400}GB", "size"),
]

AT_THE_LIMIT = [
    # (configuration, dotted path in the normalized spec, value)
    (f"type: fleet\nname: ff\nnodes: 0..{MAX_NODES}", "nodes.max", MAX_NODES),
    (FLEET + f"blocks: {MAX_BLOCKS}", "blocks", MAX_BLOCKS),
    (FLEET + "idle_duration: 365d", "idle_duration", MAX_DURATION),
    (FLEET + f"resources: {{gpu: {MAX_GPUS}}}", "resources.gpu.count.max", MAX_GPUS),
    (FLEET + f"resources: {{cpu: {MAX_CPUS}}}", "resources.cpu.max", MAX_CPUS),
    (FLEET + "resources: {memory: 64TB}", "resources.memory.max", 65536.0),
    (FLEET + "resources: {disk: 1024TB}", "resources.disk.max", 1048576.0),
    (FLEET + "max_price: 10000", "max_price", 10000.0),
    (TASK + f"nodes: {MAX_NODES}", "nodes", MAX_NODES),
    (TASK + f"retry: {{max_attempts: {MAX_RETRY_ATTEMPTS}, duration: 365d}}", "retry.max_attempts",
     MAX_RETRY_ATTEMPTS),
    (SERVICE + f"replicas: {MAX_REPLICAS}", "replicas", MAX_REPLICAS),
    (SERVICE.replace("8000", "65535"), "port", 65535),
    (VOLUME + "size: 64TB", "size_gb", MAX_VOLUME_SIZE_GB),
]


def _parse(text: str) -> dict:
    return parse_configuration(load_document(text, "application/yaml"))[1]


@pytest.mark.parametrize(("text", "path", "value"), AT_THE_LIMIT)
def test_a_number_at_its_limit_is_accepted(text, path, value):
    spec = _parse(text)
    for key in path.split("."):
        spec = spec[key]
    assert spec == value


@pytest.mark.parametrize(("text", "field"), OUT_OF_RANGE)
def test_a_number_out_of_range_names_its_field(text, field):
    with pytest.raises(SpecError) as info:
        _parse(text)
    assert info.value.field == field
    assert len(info.value.message) < 200  # a hostile value is not echoed in full


def _snapshot(project):
    return (Event.objects.count(), project.fleets.count(), project.volumes.count(), project.runs.count())


@pytest.mark.django_db
@pytest.mark.parametrize(("text", "field"), OUT_OF_RANGE)
def test_the_api_answers_400_naming_the_field_and_writes_nothing(project, sim_backend, api, text, field):
    before = _snapshot(project)
    for query in ("?dry_run=true", ""):
        response = api.post(APPLY + query, data=text, content_type="application/yaml")
        assert response.status_code == 400, response.content[:300]
        assert (response.json()["code"], response.json()["field"]) == ("invalid_configuration", field)
    assert _snapshot(project) == before


@pytest.mark.django_db
@pytest.mark.parametrize(("path", "body", "field"), [
    ("fleets/", {"name": "ff", "nodes": 1, "blocks": 10**23}, "blocks"),
    ("fleets/", {"name": "ff", "nodes": {"min": 0, "max": 5000}}, "nodes"),
    ("volumes/", {"name": "vv", "backend": "sim", "region": "eu-west-1", "size": "99999999999999999999TB"}, "size"),
    ("runs/", {"type": "service", "name": "ss", "commands": ["x"], "port": 80, "replicas": 10**6}, "replicas"),
])
def test_resource_endpoints_apply_the_same_limits(project, sim_backend, api, path, body, field):
    before = _snapshot(project)
    response = api.post(f"/api/v1/projects/main/{path}", body, format="json")
    assert response.status_code == 400, response.content[:300]
    assert response.json()["field"] == field
    assert _snapshot(project) == before
