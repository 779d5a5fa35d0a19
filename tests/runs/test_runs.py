"""Runs: submitted through the API, they wait for placement; stop, abort and delete."""

import pytest

from core.models import Event
from runs.models import Run
from tests import factories

pytestmark = pytest.mark.django_db

RUNS = "/api/v1/projects/main/runs/"
SERVICE = {"type": "service", "name": "llm", "commands": ["serve"], "port": 8000, "replicas": 2,
           "resources": {"gpu": 1}}


def test_submitted_run_waits_for_placement(project, sim_backend, api):
    response = api.post(RUNS, SERVICE, format="json")
    assert response.status_code == 202
    assert response.json()["status"] == "submitted"
    jobs = api.get(RUNS + "llm/jobs/").json()["results"]
    assert [(j["name"], j["status"], j["instance"]) for j in jobs] == [
        ("llm-0-0", "submitted", None), ("llm-0-1", "submitted", None)]


@pytest.mark.parametrize("abort,job_status,reason", [(False, "terminated", "stopped_by_user"),
                                                      (True, "aborted", "aborted_by_user")])
def test_stop_and_abort(project, sim_backend, api, abort, job_status, reason):
    api.post(RUNS, SERVICE, format="json")
    response = api.post(RUNS + "llm/stop/", {"abort": abort}, format="json")
    assert response.status_code == 202
    assert (response.json()["status"], response.json()["termination_reason"]) == ("terminated", reason)
    assert {j["status"] for j in api.get(RUNS + "llm/jobs/").json()["results"]} == {job_status}
    kinds = list(Event.objects.filter(resource_name="llm").order_by("id").values_list("kind", flat=True))
    assert kinds == ["submitted", "terminating", "terminated"]
    again = api.post(RUNS + "llm/stop/", {}, format="json")
    assert again.status_code == 409 and again.json()["code"] == "run_finished"


def test_job_on_an_instance_stays_terminating_until_its_workload_is_released(project, sim_backend, api):
    run = factories.RunFactory(project=project, name="train", status="running")
    instance = factories.InstanceFactory(fleet=factories.FleetFactory(project=project), backend=sim_backend)
    factories.JobFactory(run=run, instance=instance, blocks=1, status="running")
    body = api.post(RUNS + "train/stop/", {}, format="json").json()
    assert body["status"] == "terminating"
    assert run.jobs.get().status == "terminating"
    # Aborting a terminating run is allowed and records the stronger reason.
    body = api.post(RUNS + "train/stop/", {"abort": True}, format="json").json()
    assert (body["status"], body["termination_reason"]) == ("terminating", "aborted_by_user")


def test_delete_only_finished_runs(project, sim_backend, api):
    api.post(RUNS, SERVICE, format="json")
    response = api.delete(RUNS + "llm/")
    assert response.status_code == 409 and response.json()["code"] == "run_active"
    api.post(RUNS + "llm/stop/", {}, format="json")
    assert api.delete(RUNS + "llm/").status_code == 204
    assert not Run.objects.exists()
    assert api.get(RUNS + "llm/").status_code == 404


def test_a_run_status_derived_from_stale_jobs_never_overwrites_a_newer_one(project):
    """Placement and the job loop derive a run's status concurrently; the one that read older jobs
    must not move the run back (found by bench/api_runs.py: runs left 'provisioning' with jobs running)."""
    from runs.jobs import _move_group, refresh_run_statuses
    from runs.models import Job, Run

    run = factories.RunFactory(project=project, name="r", status="running")
    Job.objects.create(project=project, run=run, name="r-0-0", status="running")
    stale = Run.objects.get(pk=run.pk)
    stale.status = "submitted"  # what placement read before the job loop moved the run
    assert _move_group([stale], "submitted", "provisioning") == {run.pk}
    assert Run.objects.get(pk=run.pk).status == "running"
    Run.objects.filter(pk=run.pk).update(status="provisioning")  # a lagging status is derived again
    refresh_run_statuses([run.pk])
    assert Run.objects.get(pk=run.pk).status == "running"
