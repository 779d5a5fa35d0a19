"""Draining a backend: nothing new lands on it, fleets move their capacity elsewhere, and it empties."""

import threading

import pytest
from django.db import connection
from django.urls import reverse

from backends.models import Backend
from backends.services import terminate_backend_instances
from core.errors import Conflict
from core.models import Event
from fleets.models import Fleet, Instance
from fleets.services import create_instance
from runs.models import Run
from tests import factories
from tests.conftest import client_for
from volumes.models import Volume

pytestmark = pytest.mark.django_db

BACKENDS = "/api/v1/projects/main/backends/"


@pytest.fixture
def two_backends(project):
    return (factories.BackendFactory(project=project, name="a", type="sim"),
            factories.BackendFactory(project=project, name="b", type="sim"))


def _on_a_then_b(project, apply, reconcile, config: str) -> None:
    """Apply ``config`` while the project has only backend ``a``, then add backend ``b``."""
    factories.BackendFactory(project=project, name="a", type="sim")
    apply(config)
    reconcile()
    factories.BackendFactory(project=project, name="b", type="sim")


def _live(fleet: str) -> list[tuple[str, str]]:
    return sorted(Instance.objects.filter(fleet__name=fleet).exclude(status="terminated")
                  .values_list("backend__name", "status"))


def test_terminate_instances_moves_fleet_capacity_to_the_other_backend(project, api, apply, reconcile):
    _on_a_then_b(project, apply, reconcile, "type: fleet\nname: pair\nnodes: 2\nresources: {gpu: L4:1}\n")
    assert _live("pair") == [("a", "idle"), ("a", "idle")]
    response = api.post(BACKENDS + "a/terminate-instances/")
    assert response.status_code == 202
    assert response.json()["instances"] == ["pair-0", "pair-1"]
    reconcile()
    assert _live("pair") == [("b", "idle"), ("b", "idle")]
    assert Backend.objects.get(name="a").status == "draining"
    assert api.delete(BACKENDS + "a/").status_code == 204
    assert Fleet.objects.get(name="pair").status_message == ""


def test_drain_and_resume_set_the_status_and_write_events(two_backends, api):
    response = api.post(BACKENDS + "a/drain/")
    assert response.status_code == 200
    assert response.json()["status"] == "draining" and response.json()["name"] == "a"
    assert api.post(BACKENDS + "a/drain/").json()["status"] == "draining"  # idempotent
    assert Event.objects.filter(resource_type="backend", resource_name="a", kind="draining").count() == 1
    response = api.post(BACKENDS + "a/resume/")
    assert response.status_code == 200 and response.json()["status"] == "active"
    assert api.post(BACKENDS + "a/resume/").status_code == 200
    assert Event.objects.filter(resource_type="backend", resource_name="a", kind="resumed").count() == 1
    # Status stays read-only otherwise.
    api.patch(BACKENDS + "a/", {"status": "draining"}, format="json")
    assert Backend.objects.get(name="a").status == "active"


def test_fleet_restricted_to_a_draining_backend_waits_naming_it(two_backends, api, apply, reconcile):
    assert api.post(BACKENDS + "a/drain/").status_code == 200
    apply("type: fleet\nname: only-a\nnodes: 1\nresources: {gpu: L4:1}\nbackends: [a]\n")
    reconcile()
    fleet = Fleet.objects.get(name="only-a")
    assert _live("only-a") == []
    assert fleet.status == "submitted"
    assert "backend a is draining" in fleet.status_message
    # Resume lets provisioning go back to it.
    assert api.post(BACKENDS + "a/resume/").status_code == 200
    reconcile()
    fleet.refresh_from_db()
    assert _live("only-a") == [("a", "idle")]
    assert (fleet.status, fleet.status_message) == ("active", "")


def test_placement_skips_instances_of_a_draining_backend(project, api, apply, reconcile):
    _on_a_then_b(project, apply, reconcile, "type: fleet\nname: fixed\nnodes: 1\nresources: {gpu: L4:1}\n")
    apply("type: task\nname: first\ncommands: ['sleep 1000']\nresources: {gpu: 1}\n")
    reconcile()
    assert Run.objects.get(name="first").status == "running"
    assert api.post(BACKENDS + "a/drain/").status_code == 200
    apply("type: task\nname: second\ncommands: ['sleep 1000']\nresources: {gpu: 1}\nfleets: [fixed]\n"
          "retry: {on_events: [no-capacity], duration: 1h}\n")
    reconcile()
    second = Run.objects.get(name="second")
    assert second.status == "pending"
    assert "backend a is draining" in second.status_message
    assert Run.objects.get(name="first").status == "running"  # jobs already there keep running
    assert api.post(BACKENDS + "a/resume/").status_code == 200
    api.post("/api/v1/projects/main/runs/first/stop/", {}, format="json")
    reconcile()
    assert Run.objects.get(name="second").status == "running"


def test_volume_apply_on_a_draining_backend_is_refused(two_backends, api, apply):
    assert api.post(BACKENDS + "a/drain/").status_code == 200
    body = apply("type: volume\nname: data\nbackend: a\nregion: eu-west-1\nsize: 10GB\n", expect=409)
    assert body["code"] == "backend_draining" and "'a'" in body["detail"]
    assert body["backend"] == "a"
    assert not Volume.objects.exists()
    apply("type: volume\nname: data\nbackend: b\nregion: eu-west-1\nsize: 10GB\n")


def test_member_cannot_drain_and_non_member_sees_nothing(project, two_backends):
    member = factories.UserFactory(username="bob")
    factories.MembershipFactory(project=project, user=member, role="user")
    stranger = factories.UserFactory(username="eve")
    for path in ("drain/", "resume/"):
        assert client_for(member).post(BACKENDS + "a/" + path).status_code == 403
        assert client_for(stranger).post(BACKENDS + "a/" + path).status_code == 404
    assert Backend.objects.get(name="a").status == "active"


def _admin_action(admin_client, name: str, *backends):
    data = {"action": name, "_selected_action": [b.pk for b in backends]}
    return admin_client.post(reverse("admin:backends_backend_changelist"), data, follow=True)


def test_admin_drain_and_resume_actions(admin_client, two_backends):
    a, b = two_backends
    response = _admin_action(admin_client, "drain", a, b)
    assert response.status_code == 200
    assert set(Backend.objects.values_list("status", flat=True)) == {"draining"}
    assert Event.objects.filter(kind="draining", actor="admin").count() == 2
    changelist = admin_client.get(reverse("admin:backends_backend_changelist")).content.decode()
    assert "draining" in changelist
    _admin_action(admin_client, "resume", a)
    assert dict(Backend.objects.values_list("name", "status")) == {"a": "active", "b": "draining"}
    assert Event.objects.filter(kind="resumed", actor="admin", resource_name="a").exists()


def test_admin_change_page_buttons_drain_and_resume(admin_client, two_backends):
    a, _ = two_backends
    change = reverse("admin:backends_backend_change", args=[a.pk])
    page = admin_client.get(change).content.decode()
    assert "Drain" in page
    response = admin_client.post(reverse("admin:backends_backend_drain", args=[a.pk]), follow=True)
    assert response.status_code == 200
    a.refresh_from_db()
    assert a.status == "draining"
    assert "Resume" in admin_client.get(change).content.decode()
    admin_client.post(reverse("admin:backends_backend_resume", args=[a.pk]))
    a.refresh_from_db()
    assert a.status == "active"


CREATORS = 4
ROUNDS = 10


def _terminate_while_creating(project, round_num: int) -> tuple[list[str], int, int]:
    """Creators race ``terminate-instances`` on one backend; (names returned, created, refused)."""
    backend = factories.BackendFactory(project=project, name=f"race-{round_num}")
    fleet = factories.FleetFactory(project=project, name=f"fleet-{round_num}")
    barrier = threading.Barrier(CREATORS + 1)
    outcome = {"names": [], "created": 0, "refused": 0, "errors": []}
    lock = threading.Lock()

    def creator():
        try:
            barrier.wait()
            create_instance(fleet=fleet, backend=backend, region="eu-west-1", total_blocks=1)
            key = "created"
        except Conflict as err:
            key = "refused" if err.code == "backend_draining" else None
            if key is None:
                outcome["errors"].append(repr(err))
        except Exception as err:  # noqa: BLE001 - surfaced by the assertion below
            key = None
            outcome["errors"].append(repr(err))
        finally:
            connection.close()
        if key:
            with lock:
                outcome[key] += 1

    def terminator():
        try:
            barrier.wait()
            outcome["names"] = terminate_backend_instances(backend=backend)
        except Exception as err:  # noqa: BLE001
            outcome["errors"].append(repr(err))
        finally:
            connection.close()

    threads = [threading.Thread(target=creator) for _ in range(CREATORS)] + [threading.Thread(target=terminator)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not outcome["errors"], outcome["errors"]
    return outcome["names"], outcome["created"], outcome["refused"]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_terminate_instances_races_instance_creation():
    """Every instance created on the backend is one terminate-instances returned: none slips past the drain."""
    project = factories.ProjectFactory(name="race")
    outcomes = [_terminate_while_creating(project, n) for n in range(ROUNDS)]
    for n, (names, created, refused) in enumerate(outcomes):
        instances = Instance.objects.filter(backend__name=f"race-{n}")
        assert sorted(instances.values_list("name", flat=True)) == sorted(names)
        assert set(instances.values_list("status", flat=True)) <= {"terminating"}
        assert created == len(names) and created + refused == CREATORS
    assert sum(refused for _, _, refused in outcomes) > 0, outcomes
