"""POST .../apply/: dstack YAML or JSON creates, updates or replaces; dry runs change nothing."""

import json
from pathlib import Path

import pytest

from core.models import Event
from fleets.models import Fleet
from runs.jobs import refresh_run_statuses
from runs.models import Run
from volumes.models import Volume

pytestmark = pytest.mark.django_db

APPLY = "/api/v1/projects/main/apply/"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

FLEET = "type: fleet\nname: gpu8\nnodes: 1\nbackends: [sim]\nresources:\n  gpu: H100:8\nblocks: 8\n"


def _apply(api, body: str, dry_run: bool = False, content_type: str = "application/yaml"):
    return api.post(APPLY + ("?dry_run=true" if dry_run else ""), data=body, content_type=content_type)


def test_dry_run_says_what_would_be_created_and_changes_nothing(project, sim_backend, api):
    response = _apply(api, FLEET, dry_run=True)
    assert response.status_code == 200
    body = response.json()
    assert (body["type"], body["name"], body["action"], body["dry_run"]) == ("fleet", "gpu8", "create", True)
    assert body["spec"]["blocks"] == 8 and body["resource"] is None
    assert not Fleet.objects.exists() and not Event.objects.exists()


def test_create_update_unchanged(project, sim_backend, api):
    created = _apply(api, FLEET)
    assert created.status_code == 202 and created.json()["action"] == "create"
    assert created.json()["resource"]["status"] == "submitted"
    assert _apply(api, FLEET).json()["action"] == "unchanged"
    changed = FLEET.replace("blocks: 8", "blocks: 4")
    plan = _apply(api, changed, dry_run=True).json()
    assert plan["action"] == "update" and plan["changes"] == {"blocks": {"old": 8, "new": 4}}
    assert Fleet.objects.get().spec["blocks"] == 8
    assert _apply(api, changed).json()["action"] == "update"
    assert Fleet.objects.get().spec["blocks"] == 4
    assert list(Event.objects.filter(resource_type="fleet").values_list("kind", flat=True)) == [
        "spec_updated", "submitted"]


def test_json_documents_are_accepted(project, sim_backend, api):
    doc = {"type": "volume", "name": "data-eu", "backend": "sim", "region": "eu-west-1", "size": "100GB"}
    response = _apply(api, json.dumps(doc), content_type="application/json")
    assert response.status_code == 202
    assert response.json()["resource"]["status"] == "submitted"
    assert Volume.objects.get().size_gb == 100


def test_runs_wait_submitted_and_a_finished_run_is_replaced(project, sim_backend, api):
    task = "type: task\nname: train\nnodes: 2\ncommands: [python train.py]\nresources: {gpu: A100:2}\n"
    body = _apply(api, task).json()
    assert body["resource"]["status"] == "submitted"
    run = Run.objects.get()
    assert list(run.jobs.values_list("name", "status")) == [("train-0-0", "submitted"), ("train-1-0", "submitted")]
    assert _apply(api, task).status_code == 409  # active: stop it first
    api.post("/api/v1/projects/main/runs/train/stop/", {}, format="json")
    replaced = _apply(api, task)
    assert replaced.status_code == 202 and replaced.json()["action"] == "replace"
    assert Run.objects.get().status == "submitted"


def test_volume_with_another_configuration_is_a_conflict(project, sim_backend, api):
    volume = "type: volume\nname: data-eu\nbackend: sim\nregion: eu-west-1\nsize: 100GB\n"
    _apply(api, volume)
    response = _apply(api, volume.replace("100GB", "200GB"))
    assert response.status_code == 409 and response.json()["code"] == "volume_exists"
    assert Volume.objects.get().size_gb == 100


def test_service_replicas_and_health(project, sim_backend, api):
    service = "type: service\nname: llm\ncommands: [serve]\nport: 8000\nreplicas: 3\nresources: {gpu: 1}\n"
    resource = _apply(api, service).json()["resource"]
    assert resource["replicas"] == {"desired": 3, "running": 0, "ready": 0}
    assert resource["health"] == "down"
    run = Run.objects.get()
    run.jobs.filter(replica_num__in=[0, 1]).update(status="running", ready=True)
    run.jobs.filter(replica_num=2).update(status="running")  # running, its probes not passed yet
    refresh_run_statuses([run.pk])
    run = api.get("/api/v1/projects/main/runs/llm/").json()
    assert run["replicas"] == {"desired": 3, "running": 3, "ready": 2} and run["health"] == "degraded"


def test_every_shipped_example_applies(project, sim_backend, api):
    """The examples of the spec (copied into tests/examples) apply in dependency order."""
    order = ["volume-eu.yml", "volume-us.yml", "fleet-gpu8-blocks.yml", "fleet-elastic.yml", "task-train.yml",
             "task-distributed.yml", "task-short-form-volume.yml", "service-llm.yml"]
    assert sorted(order) == sorted(p.name for p in EXAMPLES.glob("*.yml"))
    for name in order:
        response = _apply(api, (EXAMPLES / name).read_text())
        assert response.status_code == 202, (name, response.content)
