"""Tenancy: a non-member sees nothing of a project (404 everywhere, never 403); staff see all."""

import pytest

from tests import factories
from tests.conftest import client_for

pytestmark = pytest.mark.django_db

PROJECT_PATHS = [
    ("get", "/api/v1/projects/main/"),
    ("get", "/api/v1/projects/main/backends/"),
    ("post", "/api/v1/projects/main/backends/"),
    ("get", "/api/v1/projects/main/backends/sim/"),
    ("patch", "/api/v1/projects/main/backends/sim/"),
    ("delete", "/api/v1/projects/main/backends/sim/"),
    ("post", "/api/v1/projects/main/backends/sim/terminate-instances/"),
    ("get", "/api/v1/projects/main/backends/sim/resources/"),
    ("get", "/api/v1/projects/main/backends/sim/faults/"),
    ("post", "/api/v1/projects/main/backends/sim/faults/"),
    ("delete", "/api/v1/projects/main/backends/sim/faults/"),
    ("get", "/api/v1/projects/main/fleets/"),
    ("post", "/api/v1/projects/main/fleets/"),
    ("get", "/api/v1/projects/main/fleets/gpu8/"),
    ("delete", "/api/v1/projects/main/fleets/gpu8/"),
    ("get", "/api/v1/projects/main/instances/"),
    ("get", "/api/v1/projects/main/instances/gpu8-0/"),
    ("post", "/api/v1/projects/main/instances/gpu8-0/terminate/"),
    ("get", "/api/v1/projects/main/volumes/"),
    ("post", "/api/v1/projects/main/volumes/"),
    ("get", "/api/v1/projects/main/volumes/data/"),
    ("delete", "/api/v1/projects/main/volumes/data/"),
    ("post", "/api/v1/projects/main/volumes/data/force-detach/"),
    ("get", "/api/v1/projects/main/runs/"),
    ("post", "/api/v1/projects/main/runs/"),
    ("get", "/api/v1/projects/main/runs/train/"),
    ("delete", "/api/v1/projects/main/runs/train/"),
    ("post", "/api/v1/projects/main/runs/train/stop/"),
    ("get", "/api/v1/projects/main/runs/train/jobs/"),
    ("post", "/api/v1/projects/main/apply/"),
    ("get", "/api/v1/projects/main/events/"),
]


@pytest.fixture
def populated(project, sim_backend):
    fleet = factories.FleetFactory(project=project, name="gpu8")
    factories.InstanceFactory(fleet=fleet, backend=sim_backend, instance_num=0)
    factories.VolumeFactory(project=project, backend=sim_backend, name="data")
    factories.JobFactory(run=factories.RunFactory(project=project, name="train"))
    return project


@pytest.mark.parametrize("method,path", PROJECT_PATHS)
def test_non_member_gets_404_and_changes_nothing(populated, method, path):
    outsider = client_for(factories.UserFactory(username="mallory"))
    before = _state(populated)
    body = "type: fleet\nname: x\nnodes: 1\n" if path.endswith("apply/") else {"name": "x"}
    kwargs = {"content_type": "application/yaml"} if path.endswith("apply/") else {"format": "json"}
    response = getattr(outsider, method)(path, body, **kwargs) if method != "get" else outsider.get(path)
    assert response.status_code == 404, response.content
    assert response.json()["code"] == "not_found"
    assert _state(populated) == before


@pytest.mark.parametrize("method,path", [p for p in PROJECT_PATHS if p[0] == "get"])
def test_member_and_staff_can_read(populated, api, method, path):
    assert api.get(path).status_code == 200
    staff = client_for(factories.UserFactory(username="ops", is_staff=True))
    assert staff.get(path).status_code == 200


def test_project_list_shows_only_memberships(project, api):
    factories.ProjectFactory(name="secret")
    assert [p["name"] for p in api.get("/api/v1/projects/").json()["results"]] == ["main"]
    staff = client_for(factories.UserFactory(username="ops", is_staff=True))
    assert [p["name"] for p in staff.get("/api/v1/projects/").json()["results"]] == ["main", "secret"]


def test_anonymous_is_401(project):
    from rest_framework.test import APIClient

    response = APIClient().get("/api/v1/projects/")
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"


def test_plain_member_cannot_change_backends(project, sim_backend):
    member = factories.UserFactory(username="bob")
    factories.MembershipFactory(project=project, user=member, role="user")
    client = client_for(member)
    assert client.get("/api/v1/projects/main/backends/").status_code == 200
    response = client.delete("/api/v1/projects/main/backends/sim/")
    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"
    assert project.backends.filter(name="sim").exists()


def test_creating_a_project_makes_the_creator_its_admin(api):
    response = api.post("/api/v1/projects/", {"name": "research"}, format="json")
    assert response.status_code == 201
    assert api.get("/api/v1/projects/research/backends/").status_code == 200
    assert api.post("/api/v1/projects/", {"name": "research"}, format="json").status_code == 409
    assert api.post("/api/v1/projects/", {"name": "Bad_Name"}, format="json").status_code == 400


def _state(project):
    from core.models import Event

    return (
        Event.objects.count(),
        list(project.backends.values_list("name", "config")),
        list(project.fleets.values_list("name", "status")),
        list(project.instances.values_list("name", "status")),
        list(project.volumes.values_list("name", "status")),
        list(project.runs.values_list("name", "status")),
        list(project.backends.get(name="sim").sim_faults.values_list("kind")),
    )
