"""``utilization_policy``: a run whose GPUs stay below ``min_gpu_utilization`` for the whole ``time_window``
is stopped; the job's utilization is recorded when it changes and shown by the API."""

import datetime

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from core.models import Event
from runs.models import RUN_FINISHED_STATES, Job
from runs.supervisor import retry_failed_replicas
from runs.workloads import Poller

pytestmark = pytest.mark.django_db

P = "/api/v1/projects/main"
FLEET = "type: fleet\nname: gpu\nnodes: 0..4\nbackends: [sim]\nresources: {gpu: A100:1}\n"
POLICY = "utilization_policy: {min_gpu_utilization: 50, time_window: 10m}\n"
TRAIN = "type: task\nname: train\ncommands: [python train.py]\nresources: {gpu: 1}\n"


def run_of(api, name: str = "train") -> dict:
    return api.get(f"{P}/runs/{name}/").json()


def job_of(name: str = "train") -> Job:
    return Job.objects.get(run__name=name)


def utilization(api, percent: float, job: str = "train-0-0") -> None:
    """The sim job reports ``percent`` from now on (the latest fault naming it wins)."""
    api.delete(f"{P}/backends/sim/faults/?kind=gpu_utilization")
    response = api.post(f"{P}/backends/sim/faults/", {"kind": "gpu_utilization", "job": job, "percent": percent},
                        format="json")
    assert response.status_code == 201, response.content


def low_for(seconds: int, name: str = "train") -> None:
    """Time travel: the job has been low for ``seconds`` already."""
    since = timezone.now() - datetime.timedelta(seconds=seconds)
    Job.objects.filter(run__name=name).update(low_utilization_since=since)


@pytest.fixture
def fleet(sim_backend, apply, reconcile):
    apply(FLEET)
    reconcile()


@pytest.fixture
def train(fleet, apply, reconcile):
    apply(TRAIN + POLICY)
    reconcile()


def test_utilization_is_recorded_and_shown_by_the_jobs_endpoint(train, api, reconcile):
    assert api.get(f"{P}/runs/train/jobs/").json()["results"][0]["gpu_utilization"] is None  # not reported yet
    utilization(api, 3.4)
    reconcile()
    job = api.get(f"{P}/runs/train/jobs/").json()["results"][0]
    assert job["gpu_utilization"] == 3.0  # whole percents
    assert job["low_utilization_since"] is not None
    assert run_of(api)["status"] == "running"


def test_below_min_for_less_than_the_window_keeps_running(train, api, reconcile):
    utilization(api, 3)
    reconcile()
    since = job_of().low_utilization_since
    assert since is not None
    reconcile()
    assert job_of().low_utilization_since == since  # set when it first dropped, not at every poll
    low_for(540)
    reconcile()
    assert run_of(api)["status"] == "running"
    assert job_of().status == "running"


def test_below_min_for_the_window_terminates_the_run(train, api, reconcile):
    utilization(api, 3)
    reconcile()
    low_for(600)
    reconcile()
    run = run_of(api)
    assert run["status"] in RUN_FINISHED_STATES, run
    assert run["termination_reason"] == "terminated_due_to_utilization_policy", run
    for number in ("below 50%", "600 s", "last reported 3%"):
        assert number in run["status_message"], run
    event = Event.objects.filter(resource_type="run", resource_name="train", kind="terminating").get()
    assert "below 50% for 600 s" in event.message
    assert job_of().status == "terminated"


def test_the_supervisor_stops_it_without_waiting_for_a_poll(train, api, reconcile):
    utilization(api, 10)
    reconcile()
    low_for(601)
    assert retry_failed_replicas() >= 1
    run = run_of(api)
    assert (run["status"], run["termination_reason"]) == ("terminating", "terminated_due_to_utilization_policy")


def test_going_back_up_clears_low_utilization_since(train, api, reconcile):
    utilization(api, 3)
    reconcile()
    assert job_of().low_utilization_since is not None
    utilization(api, 80)
    reconcile()
    job = job_of()
    assert (job.gpu_utilization, job.low_utilization_since) == (80.0, None)
    utilization(api, 3)
    reconcile()
    assert job_of().low_utilization_since is not None
    api.delete(f"{P}/backends/sim/faults/")  # no figure at all: nothing says it is low
    reconcile()
    job = job_of()
    assert (job.gpu_utilization, job.low_utilization_since) == (None, None)
    assert run_of(api)["status"] == "running"


def test_a_run_without_a_policy_is_never_stopped_for_utilization(fleet, api, apply, reconcile, monkeypatch):
    apply(TRAIN)
    reconcile()
    utilization(api, 0)
    reconcile()
    job = job_of()
    assert (job.gpu_utilization, job.low_utilization_since) == (0.0, None)
    later = timezone.now() + datetime.timedelta(days=1)
    monkeypatch.setattr(timezone, "now", lambda: later)
    retry_failed_replicas()
    assert run_of(api)["status"] == "running"


def test_a_dev_environment_and_a_service_follow_the_policy_too(fleet, api, apply, reconcile):
    apply("type: dev-environment\nname: dev\nide: vscode\nresources: {gpu: 1}\n" + POLICY)
    apply("type: service\nname: llm\ncommands: [serve]\nport: 8000\nreplicas: 2\nresources: {gpu: 1}\n" + POLICY)
    reconcile()
    utilization(api, 5, job="dev-0-0")
    reconcile()
    low_for(600, "dev")
    reconcile()
    assert run_of(api, "dev")["termination_reason"] == "terminated_due_to_utilization_policy"
    assert run_of(api, "llm")["status"] == "running"  # its replicas report nothing low


def test_a_steady_utilization_costs_no_write_per_poll(train, api, reconcile):
    utilization(api, 3)
    reconcile()
    Job.objects.update(lease_until=None, lease_owner="")
    with CaptureQueriesContext(connection) as queries:
        assert Poller().run() == 0
    writes = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("UPDATE")
              and "gpu_utilization" in q["sql"]]
    assert writes == []
    utilization(api, 4)
    Job.objects.update(lease_until=None, lease_owner="")
    with CaptureQueriesContext(connection) as queries:
        Poller().run()
    assert [q for q in queries.captured_queries if "gpu_utilization" in q["sql"] and q["sql"].startswith("UPDATE")]
    assert job_of().gpu_utilization == 4.0


def test_a_run_stopped_by_its_policy_ends_terminated(train, api, reconcile):
    utilization(api, 3)
    reconcile()
    low_for(600)
    reconcile()
    run = run_of(api)
    assert (run["status"], run["termination_reason"]) == ("terminated", "terminated_due_to_utilization_policy"), run
    assert "below 50%" in run["status_message"]
    job = job_of()
    assert (job.status, job.termination_reason) == ("terminated", "terminated_due_to_utilization_policy")


def test_a_run_the_user_is_stopping_keeps_the_users_reason(train, api, reconcile):
    """A run the user is stopping is not stopped again by the policy: the stop's reason stands."""
    from runs.models import Run
    from runs.utilization import enforce_utilization_policies

    utilization(api, 3)
    reconcile()
    low_for(601)
    assert api.post(f"{P}/runs/train/stop/", {"abort": False}, format="json").status_code == 202
    Run.objects.filter(name="train").update(status="terminating")  # still stopping (its jobs not ended yet)
    assert enforce_utilization_policies() == 0
    assert Run.objects.get(name="train").termination_reason == "stopped_by_user"
