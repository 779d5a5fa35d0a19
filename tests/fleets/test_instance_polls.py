"""Polls never read an error as "gone", and status messages always describe the current state."""

from unittest import mock

import pytest

from backends.drivers.base import NotFoundError
from backends.drivers.sim import SimDriver
from backends.models import SimInstance
from fleets.models import Instance

pytestmark = pytest.mark.django_db

FAULTS = "/api/v1/projects/main/backends/sim/faults/"


def _up_fleet(apply, reconcile) -> Instance:
    apply("type: fleet\nname: solo\nnodes: 1\nresources: {gpu: L4:1}\n")
    reconcile()
    instance = Instance.objects.get()
    assert instance.status == "idle"
    return instance


def test_a_poll_not_found_is_shown_and_retried_never_read_as_terminated(sim_backend, apply, reconcile):
    """AWS answers NotFound for a while after a launch: the VM is alive, so the row must stay so."""
    from fleets.instances import process_instances

    instance = _up_fleet(apply, reconcile)
    not_found = {instance.provider_instance_id: NotFoundError("InvalidInstanceID.NotFound")}
    with mock.patch.object(SimDriver, "instance_states", return_value=not_found):
        Instance.objects.update(lease_until=None)
        process_instances()
    instance.refresh_from_db()
    assert instance.status == "idle" and instance.termination_reason == ""
    assert "does not know" in instance.status_message and instance.failures == 1
    assert SimInstance.objects.get().state == "running"
    Instance.objects.update(lease_until=None)
    process_instances()  # the provider knows it again: the message goes, the row stays up
    instance.refresh_from_db()
    assert (instance.status, instance.status_message, instance.failures) == ("idle", "", 0)


def test_an_instance_that_came_up_after_provider_errors_has_no_stale_message(sim_backend, api, apply, reconcile):
    from fleets.instances import process_instances
    from fleets.provisioning import reconcile_fleets

    apply("type: fleet\nname: flaky\nnodes: 1\nresources: {gpu: L4:1}\n")
    reconcile_fleets()
    api.post(FAULTS, {"kind": "api_errors", "rate": 1}, format="json")
    process_instances()
    assert "provider error" in Instance.objects.get().status_message
    api.delete(FAULTS)
    reconcile()
    assert Instance.objects.values_list("status", "status_message").get() == ("idle", "")
    assert api.get("/api/v1/projects/main/fleets/flaky/").json()["status_message"] == ""


def test_an_aborted_run_says_it_was_aborted_not_aborting(sim_backend, api, apply, reconcile):
    _up_fleet(apply, reconcile)
    apply("type: task\nname: train\ncommands: [serve]\nresources: {gpu: L4:1}\n")
    reconcile()
    runs = "/api/v1/projects/main/runs/"
    api.post(runs + "train/stop/", {"abort": False}, format="json")
    api.post(runs + "train/stop/", {"abort": True}, format="json")  # escalates while terminating
    reconcile()
    body = api.get(runs + "train/").json()
    assert (body["status"], body["termination_reason"]) == ("terminated", "aborted_by_user")
    assert body["status_message"] == "aborted by the user"
