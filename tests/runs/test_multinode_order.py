"""Multi-node tasks: ``startup_order`` (which nodes' workloads start first) and ``stop_criteria``
(whether the master finishing ends the run), as in dstack. job_num 0 is the master."""

import datetime

import pytest
from django.utils import timezone

from backends.sim_models import SimJob
from fleets.models import Instance
from runs.models import Job
from runs.placement import place_jobs
from runs.workloads import process_jobs

pytestmark = pytest.mark.django_db

P = "/api/v1/projects/main"
FLEET = "type: fleet\nname: trio\nnodes: 3\nbackends: [sim]\nresources: {gpu: H100:8}\n"
MASTER, WORKERS = "train-0-0", ("train-1-0", "train-2-0")


def task(apply, extra: str = "", commands: str = "[torchrun]") -> None:
    apply(f"type: task\nname: train\nnodes: 3\ncommands: {commands}\nresources: {{gpu: 8}}\n{extra}")


def run_of(api) -> dict:
    return api.get(f"{P}/runs/train/").json()


def job(name: str) -> Job:
    return Job.objects.get(name=name)


def started_at_provider(*names: str) -> set[str]:
    """The jobs whose workload the sim provider was asked to start."""
    return set(SimJob.objects.filter(job_name__in=names).values_list("job_name", flat=True))


def hold(name: str) -> None:
    """Another worker holds the job's row (its pass has not recorded the start yet)."""
    Job.objects.filter(name=name).update(lease_until=timezone.now() + datetime.timedelta(minutes=5),
                                         lease_owner="another-worker")


def release(name: str) -> None:
    Job.objects.filter(name=name).update(lease_until=None, lease_owner="")


def finish_at_provider(name: str, exit_status: int = 0) -> None:
    """The simulated world: the job's script ends now with ``exit_status`` (``sleep N; exit K`` elapsed)."""
    assert SimJob.objects.filter(job_name=name).update(finishes_at=timezone.now(), exit_status=exit_status) == 1


def fault(api, **params) -> None:
    assert api.post(f"{P}/backends/sim/faults/", params, format="json").status_code in (200, 201)


@pytest.fixture
def placed(sim_backend, apply, reconcile):
    """A three-instance fleet that is up; ``placed(extra)`` submits the task and places its three nodes."""
    apply(FLEET)
    reconcile()

    def submit(extra: str = "", **kwargs) -> None:
        task(apply, extra, **kwargs)
        assert place_jobs() == 3
        assert set(Job.objects.values_list("status", flat=True)) == {"provisioning"}
        assert set(Instance.objects.values_list("status", flat=True)) == {"busy"}

    return submit


def test_master_first_starts_no_worker_before_the_master(placed, api):
    placed("startup_order: master-first\n")
    hold(MASTER)
    for _ in range(3):
        process_jobs()
        Job.objects.filter(name__in=WORKERS).update(lease_until=None)  # due again, as after the wait
    assert started_at_provider(MASTER, *WORKERS) == set()  # the driver never saw a start
    for name in WORKERS:
        assert (job(name).status, job(name).status_message) == (
            "provisioning", "waiting for the master to start (startup_order: master-first)")
    listed = {j["name"]: j["status_message"] for j in api.get(f"{P}/runs/train/jobs/").json()["results"]}
    assert listed[WORKERS[0]].startswith("waiting for the master to start")

    release(MASTER)
    process_jobs()  # one pass: the master starts, then the workers it held back, without waiting out their rest
    assert {j.name: (j.status, j.status_message) for j in Job.objects.all()} == {
        name: ("running", "") for name in (MASTER, *WORKERS)}
    order = list(SimJob.objects.order_by("pk").values_list("job_name", flat=True))
    assert order[0] == MASTER and set(order[1:]) == set(WORKERS)
    assert job(MASTER).started_at <= min(job(name).started_at for name in WORKERS)


def test_workers_first_starts_the_master_after_every_worker(placed):
    placed("startup_order: workers-first\n")
    hold(WORKERS[1])
    process_jobs()
    assert started_at_provider(MASTER, *WORKERS) == {WORKERS[0]}
    master = job(MASTER)
    assert (master.status, master.status_message) == (
        "provisioning", "waiting for the workers to start (1/2 started; startup_order: workers-first)")

    release(WORKERS[1])
    process_jobs()
    assert set(Job.objects.values_list("status", flat=True)) == {"running"}
    assert SimJob.objects.order_by("pk").values_list("job_name", flat=True).last() == MASTER
    assert job(MASTER).started_at >= max(job(name).started_at for name in WORKERS)


def test_any_order_starts_every_node_in_one_pass(placed):
    placed()  # startup_order defaults to any
    hold(MASTER)
    process_jobs()
    assert started_at_provider(*WORKERS) == set(WORKERS)  # nobody waits for the master
    release(MASTER)
    process_jobs()
    assert set(Job.objects.values_list("status", flat=True)) == {"running"}


def test_an_explicit_any_starts_every_node_in_one_pass(placed):
    placed("startup_order: any\n")
    process_jobs()
    assert started_at_provider(MASTER, *WORKERS) == {MASTER, *WORKERS}
    assert set(Job.objects.values_list("status", flat=True)) == {"running"}


def test_a_node_failing_while_others_wait_fails_the_run_without_deadlock(placed, api, reconcile):
    placed("startup_order: master-first\n")
    hold(MASTER)
    process_jobs()
    assert started_at_provider(*WORKERS) == set()
    fault(api, kind="interrupt_instance", instance=job(MASTER).instance.name)
    release(MASTER)
    reconcile()
    run = run_of(api)
    assert (run["status"], run["termination_reason"]) == ("failed", "job_failed"), run
    assert (job(MASTER).status, job(MASTER).termination_reason) == ("failed", "interrupted")
    for name in WORKERS:
        assert (job(name).status, job(name).termination_reason) == ("terminated", "stopped_by_server")
    assert started_at_provider(*WORKERS) == set()  # they were stopped while waiting, never started


def test_master_done_ends_the_run_and_stops_the_workers(placed, api, reconcile):
    placed("stop_criteria: master-done\n")
    reconcile()
    assert run_of(api)["status"] == "running"
    finish_at_provider(MASTER)  # the master's `sleep 1; exit 0` is over; the workers run on
    reconcile()
    run = run_of(api)
    assert (run["status"], run["termination_reason"]) == ("done", "all_jobs_done"), run
    assert run["status_message"] == f"master job {MASTER} finished (stop_criteria: master-done)"
    assert (job(MASTER).status, job(MASTER).exit_status) == ("done", 0)
    for name in WORKERS:
        worker = job(name)
        assert (worker.status, worker.termination_reason) == ("done", "done")
        assert worker.status_message == f"stopped: master job {MASTER} finished (stop_criteria: master-done)"
        assert worker.workload_stopped_at is not None
    assert set(SimJob.objects.filter(job_name__in=WORKERS).values_list("state", flat=True)) == {"stopped"}
    assert set(Instance.objects.values_list("status", "busy_blocks")) == {("idle", 0)}  # blocks given back


def test_all_done_by_default_waits_for_every_node(placed, api, reconcile):
    placed()
    reconcile()
    finish_at_provider(MASTER)
    reconcile()
    assert run_of(api)["status"] == "running"
    assert {j.name: j.status for j in Job.objects.all()} == {MASTER: "done", WORKERS[0]: "running",
                                                              WORKERS[1]: "running"}
    assert Instance.objects.filter(status="busy").count() == 2
    for name in WORKERS:
        finish_at_provider(name)
    reconcile()
    run = run_of(api)
    assert (run["status"], run["termination_reason"]) == ("done", "all_jobs_done"), run
    assert set(Job.objects.values_list("status", "termination_reason")) == {("done", "done")}


def test_a_failing_master_with_master_done_still_fails_the_run(placed, api, reconcile):
    placed("stop_criteria: master-done\n")
    reconcile()
    finish_at_provider(MASTER, exit_status=3)
    reconcile()
    run = run_of(api)
    assert (run["status"], run["termination_reason"]) == ("failed", "job_failed"), run
    assert (job(MASTER).status, job(MASTER).exit_status) == ("failed", 3)
    for name in WORKERS:
        assert (job(name).status, job(name).termination_reason) == ("terminated", "stopped_by_server")
    assert set(Instance.objects.values_list("busy_blocks", flat=True)) == {0}


def test_a_failing_master_with_master_done_is_retried_like_any_failure(placed, api, reconcile):
    placed("stop_criteria: master-done\nretry: {on_events: [error], interval: 0s}\n")
    reconcile()
    fault(api, kind="crash_job", job=MASTER, exit_status=1)
    reconcile(rounds=2)
    assert job_statuses(submission=0) == {0: "failed", 1: "terminated", 2: "terminated"}
    api.delete(f"{P}/backends/sim/faults/")
    reconcile()
    assert job_statuses(submission=1) == {0: "running", 1: "running", 2: "running"}
    assert run_of(api)["status"] == "running"


def job_statuses(*, submission: int) -> dict[int, str]:
    return dict(Job.objects.filter(submission_num=submission).values_list("job_num", "status"))
