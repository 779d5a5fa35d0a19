"""Every list is paginated and uses a constant number of queries whatever its length."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests import factories

pytestmark = pytest.mark.django_db


def _populate(project, backend, start: int, count: int) -> None:
    """``count`` of every resource (with the relations each list shows), numbered from ``start``."""
    for i in range(start, start + count):
        fleet = factories.FleetFactory(project=project, name=f"fleet-{i}")
        instance = factories.InstanceFactory(fleet=fleet, backend=backend, instance_num=0)
        volume = factories.VolumeFactory(project=project, backend=backend, name=f"vol-{i}")
        run = factories.RunFactory(project=project, name=f"svc-{i}", type="service",
                                   spec={"type": "service", "replicas": 2})
        job = factories.JobFactory(run=run, instance=instance, blocks=1, status="running")
        factories.JobFactory(run=run, replica_num=1)
        volume.attachments.create(instance=instance, job=job, status="attached")
        factories.BackendFactory(project=project, name=f"backend-{i}")
        factories.JobFactory(run=project.runs.get(name="svc-0"), replica_num=2 + i)
        project.events.create(resource_type="run", resource_name=run.name, kind="submitted")


LISTS = ["backends", "fleets", "instances", "volumes", "runs", "events", "runs/svc-0/jobs"]


def _queries(api, path: str) -> tuple[int, dict]:
    with CaptureQueriesContext(connection) as ctx:
        response = api.get(f"/api/v1/projects/main/{path}/?page_size=100")
    assert response.status_code == 200
    return len(ctx.captured_queries), response.json()


@pytest.mark.parametrize("path", LISTS)
def test_list_query_count_does_not_grow(project, sim_backend, api, path):
    _populate(project, sim_backend, 0, 1)
    one, _ = _queries(api, path)
    _populate(project, sim_backend, 1, 49)
    fifty, body = _queries(api, path)
    assert body["count"] >= 50
    assert fifty == one, f"{path}: {one} queries for 1 item, {fifty} for 50"


def test_pagination_shape(project, sim_backend, api):
    for i in range(3):
        factories.BackendFactory(project=project, name=f"b-{i}")
    body = api.get("/api/v1/projects/main/backends/?page_size=2").json()
    assert set(body) == {"count", "next", "previous", "results"}
    assert body["count"] == 4 and len(body["results"]) == 2 and body["next"]


def test_filters(project, sim_backend, api):
    fleet = factories.FleetFactory(project=project, name="aa")
    factories.InstanceFactory(fleet=fleet, backend=sim_backend, instance_num=0, status="idle")
    factories.InstanceFactory(fleet=fleet, backend=sim_backend, instance_num=1, status="terminated")
    factories.InstanceFactory(fleet=factories.FleetFactory(project=project, name="bb"), backend=sim_backend,
                              instance_num=0)
    names = lambda q: [i["name"] for i in api.get(f"/api/v1/projects/main/instances/?{q}").json()["results"]]  # noqa: E731
    assert names("fleet=aa") == ["aa-0", "aa-1"]
    assert names("status=terminated") == ["aa-1"]
    assert names("backend=sim") == ["aa-0", "aa-1", "bb-0"]
    assert api.get("/api/v1/projects/main/instances/?status=bogus").status_code == 400
    factories.RunFactory(project=project, name="r1", status="done")
    factories.RunFactory(project=project, name="r2")
    runs = api.get("/api/v1/projects/main/runs/?status=done").json()["results"]
    assert [r["name"] for r in runs] == ["r1"]
    events = api.get("/api/v1/projects/main/events/?resource_type=run&resource_name=r1").json()
    assert events["count"] == 0
