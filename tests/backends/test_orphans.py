"""Orphan detection: tagged provider resources that no live row owns, seen from the cloud side."""

import datetime
import threading

import pytest
from django.conf import settings
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from backends import orphans
from backends.drivers.base import TransientError
from backends.drivers.registry import get_driver
from backends.drivers.sim_faults import add_fault
from backends.models import Backend, Orphan, SimInstance, SimVolume
from backends.services import update_backend
from backends.tasks import find_orphans
from core.models import Event
from fleets.instances import client_token, tags
from fleets.models import InstanceStatus
from tests import factories
from tests.conftest import client_for
from volumes import provisioning as volume_provisioning
from volumes.models import VolumeStatus

pytestmark = pytest.mark.django_db

RESOURCES = "/api/v1/projects/main/backends/sim/resources/"
FAULTS = "/api/v1/projects/main/backends/sim/faults/"


def driver_of(backend):
    return get_driver(Backend.objects.get(pk=backend.pk))


def offer(driver, zone="eu-west-1a"):
    return next(o for o in driver.offers() if o.availability_zone == zone and not o.spot)


def launched(backend, instance) -> str:
    """Create the instance's VM through the driver as the provisioner does (tags, client token)."""
    return driver_of(backend).create_instance(name=instance.name, offer=offer(driver_of(backend)),
                                              tags=tags(instance), client_token=client_token(instance))


@pytest.fixture
def fleet(project):
    return factories.FleetFactory(project=project, name="gpu")


@pytest.fixture
def owned_instance(sim_backend, fleet):
    """A running instance whose row records its VM."""
    instance = factories.InstanceFactory(fleet=fleet, backend=sim_backend, instance_num=0, instance_type="cpu-4")
    instance.provider_instance_id = launched(sim_backend, instance)
    instance.save()
    return instance


@pytest.fixture
def ghost(api):
    """A VM planted by the sim's orphan_instance fault: tagged as ours, unknown to the database."""
    response = api.post(FAULTS, {"kind": "orphan_instance", "region": "us-east-1", "name": "ghost-1"}, format="json")
    assert response.status_code == 201, response.content
    return SimInstance.objects.get(name="ghost-1")


def configure(backend, **config):
    update_backend(backend=Backend.objects.get(pk=backend.pk), config=config)


def age(provider_id: str, **delta) -> None:
    """Pretend the orphan was first seen ``delta`` ago (the grace is measured from then)."""
    Orphan.objects.filter(provider_id=provider_id).update(
        first_seen_at=timezone.now() - datetime.timedelta(**delta))


def events(kind: str) -> list[Event]:
    return list(Event.objects.filter(kind=kind).order_by("id"))


def sim_state(provider_id: str) -> str:
    return SimInstance.objects.get(instance_id=provider_id).state


# --- the driver and the fault ------------------------------------------------------------------------


def test_the_sim_lists_only_live_resources_tagged_as_ours(sim_backend, owned_instance):
    driver = driver_of(sim_backend)
    driver.create_instance(name="untagged", offer=offer(driver))  # created without tags: not ours
    driver.create_volume(name="untagged", region="eu-west-1", availability_zone=None, size_gb=1)
    gone = driver.create_instance(name="gone", offer=offer(driver), tags={"stackyard-managed": "true"})
    driver.terminate_instance(instance_id=gone)
    [listed] = driver.list_tagged_resources()
    assert (listed.kind, listed.provider_id, listed.name, listed.region, listed.availability_zone) == (
        "instance", owned_instance.provider_instance_id, "gpu-0", "eu-west-1", "eu-west-1a")
    assert listed.tags == tags(owned_instance) and listed.created_at is not None


def test_orphan_instance_fault_plants_a_tagged_running_vm(api, sim_backend):
    response = api.post(FAULTS, {"kind": "orphan_instance", "region": "eu-west-1"}, format="json")
    assert response.status_code == 201, response.content
    vm = SimInstance.objects.get(backend=sim_backend)
    assert vm.state == "running" and vm.region == "eu-west-1"
    assert vm.tags == {"stackyard-managed": "true", "stackyard-project": "main", "stackyard-fleet": "ghost",
                       "stackyard-instance": vm.name}
    assert response.json()["params"] == {"region": "eu-west-1", "name": vm.name}


@pytest.mark.parametrize(("payload", "field"), [
    ({"kind": "orphan_instance", "region": "mars-1"}, "region"),
    ({"kind": "orphan_instance"}, "region"),
    ({"kind": "orphan_instance", "region": "eu-west-1", "name": ""}, "name"),
    ({"kind": "orphan_instance", "region": "eu-west-1", "size": 3}, "size"),
])
def test_orphan_instance_fault_is_validated(api, sim_backend, payload, field):
    response = api.post(FAULTS, payload, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["field"] == field
    assert not SimInstance.objects.exists()


# --- the endpoint ------------------------------------------------------------------------------------


def test_resources_lists_the_fault_vm_as_orphan_and_ours_as_owned(api, sim_backend, owned_instance, ghost, project):
    volume = factories.VolumeFactory(project=project, backend=sim_backend, name="data", volume_id="")
    info = driver_of(sim_backend).create_volume(name="data", region="eu-west-1", availability_zone=None, size_gb=10,
                                                tags=volume_provisioning.tags(volume))
    volume.volume_id = info.volume_id
    volume.save()
    response = api.get(RESOURCES)
    assert response.status_code == 200, response.content
    by_id = {r["provider_id"]: r for r in response.json()}
    assert by_id[ghost.instance_id] == {
        "kind": "instance", "provider_id": ghost.instance_id, "region": "us-east-1",
        "availability_zone": "us-east-1a", "name": "ghost-1", "orphan": True,
        "created_at": by_id[ghost.instance_id]["created_at"]}
    assert by_id[ghost.instance_id]["created_at"]
    assert by_id[owned_instance.provider_instance_id]["orphan"] is False
    assert by_id[info.volume_id] | {"created_at": None} == {
        "kind": "volume", "provider_id": info.volume_id, "region": "eu-west-1", "availability_zone": "eu-west-1a",
        "name": "data", "orphan": False, "created_at": None}
    assert len(by_id) == 3
    assert not Orphan.objects.exists()  # listing judges, only the scan records


def test_resources_is_404_for_non_members_and_open_to_members(sim_backend, ghost, project):
    outsider = client_for(factories.UserFactory(username="mallory"))
    assert outsider.get(RESOURCES).status_code == 404
    member = factories.UserFactory(username="bob")
    factories.MembershipFactory(project=project, user=member, role="user")
    assert client_for(member).get(RESOURCES).status_code == 200


def test_resources_answers_503_on_a_transient_provider_error(api, sim_backend):
    api.post(FAULTS, {"kind": "api_errors", "rate": 1}, format="json")
    response = api.get(RESOURCES)
    assert response.status_code == 503
    assert response.json()["code"] == "provider_error" and "sim" in response.json()["detail"]


def test_resources_answers_502_when_the_provider_cannot_be_used(api, sim_backend):
    Backend.objects.filter(pk=sim_backend.pk).update(config={"latency": -1})  # stored invalid by hand
    response = api.get(RESOURCES)
    assert response.status_code == 502
    assert response.json()["code"] == "provider_error"


def test_resources_of_another_project_sharing_the_account_are_not_judged(api, sim_backend):
    SimInstance.objects.create(backend=sim_backend, instance_id="i-theirs", name="x-0", region="eu-west-1",
                               availability_zone="eu-west-1a", instance_type="cpu-4", state="running",
                               tags={"stackyard-managed": "true", "stackyard-project": "other"})
    assert [r["orphan"] for r in api.get(RESOURCES).json()] == [False]
    assert orphans.find_orphans() == 0


# --- the scan ----------------------------------------------------------------------------------------


def test_find_orphans_writes_orphan_found_once_across_scans(sim_backend, owned_instance, ghost):
    assert find_orphans() == 1
    first = Orphan.objects.get()
    assert find_orphans() == 1
    assert find_orphans() == 1
    orphan = Orphan.objects.get()
    assert (orphan.provider_id, orphan.kind, orphan.name, orphan.region, orphan.status) == (
        ghost.instance_id, "instance", "ghost-1", "us-east-1", "found")
    assert orphan.first_seen_at == first.first_seen_at and orphan.last_seen_at > first.last_seen_at
    [found] = events("orphan_found")
    assert (found.resource_type, found.resource_name) == ("backend", "sim")
    assert ghost.instance_id in found.message and "us-east-1" in found.message and "instance" in found.message


def test_report_only_by_default_never_terminates(sim_backend, ghost):
    find_orphans()
    age(ghost.instance_id, days=30)
    find_orphans()
    assert sim_state(ghost.instance_id) == "running"
    assert Orphan.objects.get().status == "found"
    assert events("orphan_terminated") == []


def test_terminate_orphans_waits_for_the_grace(sim_backend, ghost):
    configure(sim_backend, terminate_orphans=True, orphan_grace="10m")
    find_orphans()
    assert sim_state(ghost.instance_id) == "running"
    age(ghost.instance_id, minutes=9)
    find_orphans()
    assert sim_state(ghost.instance_id) == "running"
    age(ghost.instance_id, minutes=11)
    find_orphans()
    assert sim_state(ghost.instance_id) == "terminated"
    orphan = Orphan.objects.get()
    assert orphan.status == "terminated" and orphan.terminated_at is not None
    find_orphans()
    [terminated] = events("orphan_terminated")
    assert ghost.instance_id in terminated.message and terminated.resource_name == "sim"
    assert len(events("orphan_found")) == 1


def test_the_default_grace_is_ten_minutes(sim_backend, ghost):
    configure(sim_backend, terminate_orphans=True)
    find_orphans()
    age(ghost.instance_id, minutes=9, seconds=50)
    find_orphans()
    assert sim_state(ghost.instance_id) == "running"
    age(ghost.instance_id, minutes=10, seconds=10)
    find_orphans()
    assert sim_state(ghost.instance_id) == "terminated"


def test_a_pending_instance_whose_create_is_in_flight_is_not_an_orphan(api, sim_backend, fleet):
    pending = factories.InstanceFactory(fleet=fleet, backend=sim_backend, instance_num=0, instance_type="cpu-4",
                                        status=InstanceStatus.PENDING, provider_instance_id="")
    vm = launched(sim_backend, pending)  # the provider answered; the provisioner has not recorded it yet
    configure(sim_backend, terminate_orphans=True, orphan_grace=0)
    assert find_orphans() == 0
    assert [r["orphan"] for r in api.get(RESOURCES).json()] == [False]
    assert sim_state(vm) == "provisioning" and not Orphan.objects.exists()


def test_seed_leaked_vm_of_a_terminated_row_is_found_and_terminated(sim_backend, fleet):
    """The old leak: the VM was created, but its row ended terminated without recording the id."""
    instance = factories.InstanceFactory(fleet=fleet, backend=sim_backend, instance_num=0, instance_type="cpu-4",
                                         status=InstanceStatus.PENDING, provider_instance_id="")
    vm = launched(sim_backend, instance)
    instance.status, instance.termination_reason = InstanceStatus.TERMINATED, "no_capacity"
    instance.save()
    configure(sim_backend, terminate_orphans=True, orphan_grace="10m")
    assert find_orphans() == 1
    [found] = events("orphan_found")
    assert vm in found.message and "gpu-0" in found.message
    assert sim_state(vm) == "provisioning"  # not terminated yet: within the grace
    age(vm, minutes=11)
    find_orphans()
    assert sim_state(vm) == "terminated"
    assert Orphan.objects.get(provider_id=vm).status == "terminated"
    assert len(events("orphan_terminated")) == 1


def test_a_deleted_volume_row_leaves_an_orphan_volume_that_is_deleted(sim_backend, project):
    volume = factories.VolumeFactory(project=project, backend=sim_backend, name="data", volume_id="")
    info = driver_of(sim_backend).create_volume(name="data", region="eu-west-1", availability_zone=None, size_gb=10,
                                                tags=volume_provisioning.tags(volume),
                                                client_token=volume_provisioning.client_token(volume))
    volume.status = VolumeStatus.DELETED  # deleted without its provider id: the volume leaked
    volume.save()
    configure(sim_backend, terminate_orphans=True, orphan_grace=0)
    assert find_orphans() == 1
    assert SimVolume.objects.get(volume_id=info.volume_id).state == "deleted"
    orphan = Orphan.objects.get()
    assert (orphan.kind, orphan.status) == ("volume", "terminated")


def test_an_adopted_orphan_is_resolved_and_found_again_when_it_leaks_again(sim_backend, fleet, ghost):
    find_orphans()
    adopter = factories.InstanceFactory(fleet=fleet, backend=sim_backend, instance_num=0,
                                        provider_instance_id=ghost.instance_id)
    find_orphans()
    orphan = Orphan.objects.get()
    assert orphan.status == "resolved" and "owns" in orphan.status_message
    [resolved] = events("orphan_resolved")
    assert ghost.instance_id in resolved.message
    adopter.status = InstanceStatus.TERMINATED
    adopter.save()
    find_orphans()
    assert Orphan.objects.get().status == "found"
    assert len(events("orphan_found")) == 2


def test_an_orphan_gone_from_the_provider_is_resolved(sim_backend, ghost):
    find_orphans()
    driver_of(sim_backend).terminate_instance(instance_id=ghost.instance_id)
    find_orphans()
    orphan = Orphan.objects.get()
    assert orphan.status == "resolved" and "gone" in orphan.status_message


def test_a_failing_provider_is_skipped_and_the_others_are_scanned(project, sim_backend, ghost):
    broken = factories.BackendFactory(project=project, name="broken", type="sim")
    add_fault(broken, {"kind": "api_errors", "rate": 1})
    assert find_orphans() == 1
    assert Orphan.objects.get().backend == sim_backend


def test_termination_failure_is_shown_and_retried(sim_backend, ghost, monkeypatch):
    configure(sim_backend, terminate_orphans=True, orphan_grace=0)
    driver = driver_of(sim_backend)

    def throttled(*, instance_id):
        raise TransientError("throttled")

    monkeypatch.setattr(driver, "terminate_instance", throttled)
    monkeypatch.setattr(orphans, "get_driver", lambda backend: driver)
    find_orphans()
    orphan = Orphan.objects.get()
    assert orphan.status == "found" and "throttled" in orphan.status_message
    assert events("orphan_terminated") == []
    monkeypatch.undo()
    find_orphans()
    assert Orphan.objects.get().status == "terminated" and sim_state(ghost.instance_id) == "terminated"


def test_find_orphans_is_on_beat():
    entry = settings.CELERY_BEAT_SCHEDULE["backends.find_orphans"]
    assert entry["task"] == "backends.find_orphans"
    assert entry["options"]["expires"] <= entry["schedule"]


# --- the config keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("config", "field"), [
    ({"terminate_orphans": "yes"}, "terminate_orphans"),
    ({"orphan_grace": "10x"}, "orphan_grace"),
    ({"orphan_grace": -5}, "orphan_grace"),
])
def test_orphan_config_keys_are_validated(api, sim_backend, config, field):
    response = api.patch("/api/v1/projects/main/backends/sim/", {"config": config}, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["field"] == field


def test_orphan_config_keys_are_accepted_and_normalized(api, sim_backend):
    response = api.patch("/api/v1/projects/main/backends/sim/",
                         {"config": {"terminate_orphans": True, "orphan_grace": "1h30m"}}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["config"] == {"terminate_orphans": True, "orphan_grace": 5400}


# --- the admin ---------------------------------------------------------------------------------------


def changelist() -> str:
    return reverse("admin:backends_orphan_changelist")


def test_admin_lists_orphans_with_filters(admin_client, sim_backend, owned_instance, ghost):
    find_orphans()
    page = admin_client.get(changelist())
    assert page.status_code == 200
    text = page.content.decode()
    assert ghost.instance_id in text and owned_instance.provider_instance_id not in text
    assert ghost.instance_id in admin_client.get(changelist(), {"status__exact": "found"}).content.decode()
    assert ghost.instance_id not in admin_client.get(changelist(), {"status__exact": "resolved"}).content.decode()
    orphan = Orphan.objects.get()
    assert admin_client.get(reverse("admin:backends_orphan_change", args=[orphan.pk])).status_code == 200
    assert admin_client.get(reverse("admin:backends_orphan_add")).status_code == 403


def test_admin_terminate_now_ignores_the_grace(admin_client, sim_backend, ghost):
    find_orphans()  # report only: terminate_orphans is off
    orphan = Orphan.objects.get()
    response = admin_client.post(changelist(), {"action": "terminate_now", "_selected_action": [orphan.pk]},
                                 follow=True)
    assert response.status_code == 200
    assert sim_state(ghost.instance_id) == "terminated"
    assert Orphan.objects.get().status == "terminated"
    [event] = events("orphan_terminated")
    assert event.actor == "admin"


def test_admin_terminate_now_refuses_an_orphan_a_row_owns_by_now(admin_client, sim_backend, fleet, ghost):
    find_orphans()
    factories.InstanceFactory(fleet=fleet, backend=sim_backend, instance_num=0, provider_instance_id=ghost.instance_id)
    response = admin_client.post(changelist(), {"action": "terminate_now",
                                                "_selected_action": [Orphan.objects.get().pk]}, follow=True)
    assert "owned by a row" in response.content.decode()
    assert sim_state(ghost.instance_id) == "running"


# --- concurrent scans (PostgreSQL) -------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_scans_write_orphan_found_and_terminate_once(project, sim_backend):
    add_fault(sim_backend, {"kind": "orphan_instance", "region": "eu-west-1", "name": "ghost-1"})
    configure(sim_backend, terminate_orphans=True, orphan_grace=0)
    scans, barrier, errors = 4, threading.Barrier(4), []

    def scan():
        try:
            barrier.wait()
            find_orphans()
        except Exception as err:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(repr(err))
        finally:
            connection.close()

    threads = [threading.Thread(target=scan) for _ in range(scans)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    assert len(events("orphan_found")) == 1 and len(events("orphan_terminated")) == 1
    assert Orphan.objects.get().status == "terminated"
    assert SimInstance.objects.get(name="ghost-1").state == "terminated"
