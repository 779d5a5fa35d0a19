"""Replica failure: fail fast by default; with ``retry``, only the failed replica is resubmitted, with
a doubling interval, within its duration and max_attempts; ``max_duration`` ends a run."""

import datetime

import pytest
from django.utils import timezone

from core.models import Event
from runs.models import Job, Run
from runs.supervisor import retry_failed_replicas

pytestmark = pytest.mark.django_db

P = "/api/v1/projects/main"
FLEET = "type: fleet\nname: gpu8\nnodes: 2\nbackends: [sim]\nresources:\n  gpu: H100:8\nblocks: 8\n"


def service(apply, retry: str = "", replicas: int = 3, extra: str = "") -> None:
    apply(f"type: service\nname: llm\ncommands: [serve]\nport: 8000\nreplicas: {replicas}\nresources: {{gpu: 1}}\n"
          f"{retry}{extra}")


def run_of(api, name: str = "llm") -> dict:
    return api.get(f"{P}/runs/{name}/").json()


def fault(api, **params) -> None:
    assert api.post(f"{P}/backends/sim/faults/", params, format="json").status_code in (200, 201)


def clear_faults(api) -> None:
    api.delete(f"{P}/backends/sim/faults/")


def live(replica: int) -> Job:
    return Job.objects.filter(run__name="llm", replica_num=replica).order_by("-submission_num").first()


@pytest.fixture
def fleet(sim_backend, apply, reconcile):
    apply(FLEET)
    reconcile()


def test_fail_fast_by_default_stops_every_replica(fleet, api, apply, reconcile):
    service(apply)
    reconcile()
    assert run_of(api)["status"] == "running"
    fault(api, kind="crash_job", job="llm-0-1", exit_status=3)
    reconcile()
    run = run_of(api)
    assert (run["status"], run["termination_reason"]) == ("failed", "job_failed"), run
    assert "llm-0-1" in run["status_message"]
    jobs = {j.replica_num: (j.status, j.termination_reason) for j in Job.objects.filter(run__name="llm")}
    assert jobs == {0: ("terminated", "stopped_by_server"), 1: ("failed", "exited_with_error"),
                    2: ("terminated", "stopped_by_server")}
    assert Job.objects.count() == 3  # nothing resubmitted


def test_retry_restarts_only_the_crashed_replica(fleet, api, apply, reconcile):
    service(apply, retry="retry: {on_events: [error], interval: 1s}\n")
    reconcile()
    healthy = {r: live(r).pk for r in (0, 2)}
    fault(api, kind="crash_job", job="llm-0-1", exit_status=3)
    from tests.conftest import reconcile_pass
    for _ in range(4):  # poll by poll: the other replicas never move
        Job.objects.update(lease_until=None)
        reconcile_pass()
        assert run_of(api)["status"] == "running"
        assert {r: (live(r).pk, live(r).status) for r in (0, 2)} == {r: (pk, "running") for r, pk in healthy.items()}
        assert Job.objects.filter(run__name="llm", replica_num=1, status__in=("submitted", "provisioning",
                                                                              "running")).count() <= 1
    clear_faults(api)
    reconcile()
    replica = list(Job.objects.filter(run__name="llm", replica_num=1).order_by("submission_num")
                   .values_list("submission_num", "status"))
    assert replica[0] == (0, "failed") and replica[-1][1] == "running"
    assert {r: live(r).pk for r in (0, 2)} == healthy
    assert run_of(api)["status"] == "running"
    assert Event.objects.filter(resource_type="run", resource_name="llm", kind="retrying").exists()
    jobs = api.get(f"{P}/runs/llm/jobs/").json()["results"]  # the history is kept and listed
    assert [(j["name"], j["submission_num"]) for j in jobs if j["replica_num"] == 1][:2] == [("llm-0-1", 0),
                                                                                          ("llm-0-1", 1)]


def test_the_retry_interval_doubles_per_failure_in_a_row(fleet, api, apply, reconcile):
    service(apply, replicas=1, retry="retry: {interval: 15s}\n")
    reconcile()
    fault(api, kind="crash_job", job="llm-0-0", exit_status=1)
    reconcile(rounds=12)  # the fixture clears leases, so each retry is placed at once here
    waits = [int(m.rsplit("placed after ", 1)[1].split(" ")[0]) for m in Event.objects.filter(
        resource_type="run", resource_name="llm", kind="retrying").order_by("id").values_list("message", flat=True)]
    assert waits[:4] == [15, 30, 60, 120], waits
    job = live(0)  # the wait is the job's lease: placement does not claim it before then
    assert job.status == "submitted" or job.submission_num >= 4
    assert run_of(api)["status"] in ("pending", "provisioning", "running")


def test_a_retried_replica_is_not_placed_before_its_interval(fleet, api, apply, reconcile):
    from runs.placement import place_jobs
    from runs.workloads import process_jobs

    service(apply, replicas=1, retry="retry: {interval: 30s}\n")
    reconcile()
    fault(api, kind="crash_job", job="llm-0-0", exit_status=1)
    Job.objects.update(lease_until=None)
    process_jobs()  # the poll sees the crash; the replica is resubmitted
    retry = live(0)
    assert retry.submission_num == 1 and retry.status == "submitted"
    assert 29 <= (retry.lease_until - timezone.now()).total_seconds() <= 30
    assert place_jobs() == 0  # not yet
    assert run_of(api)["status"] == "pending"


def test_max_attempts_gives_retry_limit_exceeded(fleet, api, apply, reconcile):
    service(apply, replicas=2, retry="retry: {interval: 1s, max_attempts: 2}\n")
    reconcile()
    fault(api, kind="crash_job", job="llm-0-0", exit_status=1)
    reconcile(rounds=30)
    run = run_of(api)
    assert (run["status"], run["termination_reason"]) == ("failed", "retry_limit_exceeded"), run
    assert "max_attempts 2" in run["status_message"]
    assert Job.objects.filter(run__name="llm", replica_num=0).count() == 3  # the first try and 2 retries


def test_duration_gives_retry_limit_exceeded(fleet, api, apply, reconcile):
    service(apply, replicas=1, retry="retry: {interval: 1s, duration: 1m}\n")
    reconcile()
    fault(api, kind="crash_job", job="llm-0-0", exit_status=1)
    reconcile(rounds=3)
    assert Job.objects.filter(run__name="llm").count() >= 2
    # The failures in a row started two minutes ago.
    Job.objects.update(submitted_at=timezone.now() - datetime.timedelta(minutes=2))
    reconcile()
    run = run_of(api)
    assert (run["status"], run["termination_reason"]) == ("failed", "retry_limit_exceeded"), run
    assert "retry duration 60 s exceeded" in run["status_message"]


def test_retry_on_no_capacity_does_not_retry_an_error(fleet, api, apply, reconcile):
    service(apply, retry="retry: {on_events: [no-capacity]}\n")
    reconcile()
    fault(api, kind="crash_job", job="llm-0-2", exit_status=1)
    reconcile()
    run = run_of(api)
    assert (run["status"], run["termination_reason"]) == ("failed", "job_failed"), run
    assert Job.objects.filter(run__name="llm").count() == 3


def test_an_interruption_is_retried_on_another_instance(fleet, api, apply, reconcile):
    service(apply, replicas=1, retry="retry: {on_events: [interruption], interval: 1s}\n")
    reconcile()
    first = live(0)
    fault(api, kind="interrupt_instance", instance=first.instance.name)
    reconcile()
    first.refresh_from_db()
    assert (first.status, first.termination_reason) == ("failed", "interrupted")
    again = live(0)
    assert again.submission_num == 1 and again.status == "running", again
    assert again.instance_id != first.instance_id
    assert run_of(api)["status"] == "running"


def test_retry_true_covers_every_event(fleet, api, apply, reconcile):
    service(apply, replicas=1, retry="retry: true\n")
    reconcile()
    fault(api, kind="crash_job", job="llm-0-0", exit_status=1)
    reconcile(rounds=3)
    clear_faults(api)
    reconcile()
    assert live(0).submission_num >= 1 and live(0).status == "running"
    assert Run.objects.get(name="llm").spec["retry"]["duration"] == 3600


def test_max_duration_ends_the_run_terminated(fleet, api, apply, reconcile):
    apply("type: task\nname: long\ncommands: [train]\nresources: {gpu: 1}\nmax_duration: 1h\n")
    reconcile()
    assert run_of(api, "long")["status"] == "running"
    Run.objects.filter(name="long").update(submitted_at=timezone.now() - datetime.timedelta(hours=2))
    retry_failed_replicas()
    reconcile()
    run = run_of(api, "long")
    assert (run["status"], run["termination_reason"]) == ("terminated", "max_duration_exceeded"), run
    job = Job.objects.get(run__name="long")
    assert (job.status, job.termination_reason) == ("terminated", "max_duration_exceeded")


def test_a_failed_node_stops_its_siblings_and_the_replica_is_retried_whole(fleet, api, apply, reconcile):
    apply("type: task\nname: ddp\nnodes: 2\ncommands: [torchrun]\nresources: {gpu: 8}\n"
          "retry: {on_events: [error], interval: 1s}\n")
    reconcile()
    assert run_of(api, "ddp")["status"] == "running"
    fault(api, kind="crash_job", job="ddp-1-0", exit_status=1)
    reconcile(rounds=2)
    first = {j.job_num: (j.status, j.termination_reason) for j in Job.objects.filter(run__name="ddp",
                                                                                      submission_num=0)}
    assert first == {0: ("terminated", "stopped_by_server"), 1: ("failed", "exited_with_error")}
    clear_faults(api)
    reconcile()
    again = list(Job.objects.filter(run__name="ddp", submission_num=1).values_list("job_num", "status"))
    assert sorted(again) == [(0, "running"), (1, "running")]
    assert run_of(api, "ddp")["status"] == "running"


def test_a_failed_node_without_retry_fails_the_task(fleet, api, apply, reconcile):
    apply("type: task\nname: ddp\nnodes: 2\ncommands: [torchrun]\nresources: {gpu: 8}\n")
    reconcile()
    fault(api, kind="crash_job", job="ddp-0-0", exit_status=1)
    reconcile()
    run = run_of(api, "ddp")
    assert (run["status"], run["termination_reason"]) == ("failed", "job_failed")
    assert set(Job.objects.filter(run__name="ddp").values_list("status", flat=True)) == {"failed", "terminated"}


def test_an_interval_of_zero_resubmits_at_once(fleet, api, apply, reconcile):
    from runs.workloads import process_jobs

    service(apply, replicas=1, retry="retry: {on_events: [error], interval: 0s}\n")
    reconcile()
    assert Run.objects.get(name="llm").spec["retry"]["interval"] == 0
    fault(api, kind="crash_job", job="llm-0-0", exit_status=1)
    Job.objects.update(lease_until=None)
    process_jobs()
    retry = live(0)
    assert (retry.submission_num, retry.status, retry.lease_until) == (1, "submitted", None)
