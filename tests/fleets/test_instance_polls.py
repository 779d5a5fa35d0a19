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


def test_a_job_placed_on_an_instance_that_never_came_up_goes_back_to_the_queue(project, sim_backend):
    """No capacity for the instance a job was placed on: the job loop requeues it (blocks released),
    rather than failing a run that never started."""
    from core.models import Event
    from fleets.instances import lose_instance
    from runs.jobs import assign_job_to_instance
    from runs.models import Job
    from runs.workloads import Evictor
    from tests import factories

    fleet = factories.FleetFactory(project=project, name="elastic")
    instance = factories.InstanceFactory(fleet=fleet, backend=sim_backend, status="pending", total_blocks=8)
    run = factories.RunFactory(project=project, name="train", status="provisioning")
    job = Job.objects.create(project=project, run=run, name="train-0-0")
    assert assign_job_to_instance(job=job, instance=instance, blocks=2)
    assert lose_instance(Instance.objects.get(pk=instance.pk), reason="no_capacity", message="no capacity: eu")
    Evictor().run()
    job.refresh_from_db()
    assert (job.status, job.instance_id, job.blocks) == ("submitted", None, 0)
    assert "no capacity" in job.status_message
    assert Instance.objects.get(pk=instance.pk).busy_blocks == 0
    assert Event.objects.filter(resource_name="train-0-0", kind="requeued").exists()
