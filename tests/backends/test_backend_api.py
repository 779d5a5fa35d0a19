"""Backends through the API: credentials stay secret, deletion is refused while in use."""

import pytest

from backends.models import Backend
from core.models import Event
from tests import factories

pytestmark = pytest.mark.django_db

BACKENDS = "/api/v1/projects/main/backends/"


def test_credentials_are_write_only_and_encrypted_at_rest(project, api):
    response = api.post(BACKENDS, {"name": "lab", "type": "sim", "credentials": {"token": "hunter2-secret"}},
                        format="json")
    assert response.status_code == 201, response.content
    assert "credentials" not in response.json() and response.json()["has_credentials"] is True
    assert "hunter2" not in str(api.get(BACKENDS + "lab/").json())
    backend = Backend.objects.get(name="lab")
    assert "hunter2" not in backend.credentials_encrypted
    assert backend.credentials == {"token": "hunter2-secret"}
    assert api.patch(BACKENDS + "lab/", {"credentials": {"token": "new"}}, format="json").status_code == 200
    backend.refresh_from_db()
    assert backend.credentials == {"token": "new"}


def test_config_is_validated_and_patchable(project, api):
    created = api.post(BACKENDS, {"name": "lab", "type": "sim", "config": {"latency": 0}}, format="json")
    assert created.status_code == 201
    response = api.patch(BACKENDS + "lab/", {"config": {"regions": ["us-east-1"]}}, format="json")
    assert response.status_code == 200
    assert response.json()["config"]["regions"] == ["us-east-1"]
    assert api.post(BACKENDS, {"name": "lab", "type": "sim"}, format="json").status_code == 409


def test_delete_is_refused_while_instances_or_volumes_are_live(project, sim_backend, api):
    fleet = factories.FleetFactory(project=project, name="gpu8")
    factories.InstanceFactory(fleet=fleet, backend=sim_backend, instance_num=0, status="idle")
    factories.InstanceFactory(fleet=fleet, backend=sim_backend, instance_num=1, status="terminated")
    factories.VolumeFactory(project=project, backend=sim_backend, name="data-eu", status="active")
    factories.VolumeFactory(project=project, backend=sim_backend, name="old", status="deleted")
    response = api.delete(BACKENDS + "sim/")
    assert response.status_code == 409
    body = response.json()
    assert body["code"] == "backend_in_use"
    assert body["instances"] == ["gpu8-0"] and body["volumes"] == ["data-eu"]
    assert "detail" in body
    assert Backend.objects.filter(pk=sim_backend.pk).exists()


def test_delete_succeeds_once_everything_is_finished(project, sim_backend, api):
    fleet = factories.FleetFactory(project=project, name="gpu8")
    instance = factories.InstanceFactory(fleet=fleet, backend=sim_backend, instance_num=0, status="terminated")
    assert api.delete(BACKENDS + "sim/").status_code == 204
    assert not Backend.objects.filter(pk=sim_backend.pk).exists()
    instance.refresh_from_db()
    assert instance.backend is None  # history kept
    assert Event.objects.filter(resource_type="backend", resource_name="sim", kind="deleted").exists()


def test_terminate_instances_marks_every_active_instance(project, sim_backend, api):
    fleet = factories.FleetFactory(project=project, name="gpu8")
    for num, status in enumerate(["idle", "busy", "pending", "terminated"]):
        factories.InstanceFactory(fleet=fleet, backend=sim_backend, instance_num=num, status=status)
    response = api.post(BACKENDS + "sim/terminate-instances/")
    assert response.status_code == 202
    assert sorted(response.json()["instances"]) == ["gpu8-0", "gpu8-1", "gpu8-2"]
    statuses = dict(project.instances.values_list("name", "status"))
    assert statuses == {"gpu8-0": "terminating", "gpu8-1": "terminating", "gpu8-2": "terminating",
                        "gpu8-3": "terminated"}
    assert Event.objects.filter(resource_type="instance", kind="terminating").count() == 3


def test_terminating_instances_are_terminated_by_the_reconciler(project, sim_backend, api):
    from fleets.instances import process_terminating_instances
    from fleets.services import create_instance
    from runs.workloads import Evictor

    fleet = factories.FleetFactory(project=project, name="gpu8")
    idle = create_instance(fleet=fleet, backend=sim_backend, region="eu-west-1", total_blocks=8)
    busy = create_instance(fleet=fleet, backend=sim_backend, region="eu-west-1", total_blocks=8)
    job = factories.JobFactory(run=factories.RunFactory(project=project), instance=busy, blocks=1, status="running")
    project.instances.update(status="idle")
    api.post(BACKENDS + "sim/terminate-instances/")
    process_terminating_instances()
    idle.refresh_from_db(), busy.refresh_from_db(), job.refresh_from_db()
    # An instance with a running job is never terminated under it: the job loop stops the job first.
    assert (idle.status, busy.status, job.status) == ("terminated", "terminating", "running")
    Evictor().run()
    job.refresh_from_db()
    assert (job.status, job.termination_reason) == ("terminating", "stopped_by_server")
