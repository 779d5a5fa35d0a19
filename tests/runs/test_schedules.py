"""Scheduled runs (``schedule: {cron: ...}``): pending until their time, then run; back to pending with
the next time when they end on their own; a user's stop ends them for good."""

import datetime
import threading

import pytest
from django.db import connection
from django.utils import timezone

from backends.sim_models import SimJob
from core.models import Event
from fleets.models import Instance
from runs.models import Job, Run
from runs.schedules import next_trigger, trigger_run, trigger_scheduled_runs

pytestmark = pytest.mark.django_db

P = "/api/v1/projects/main"
FLEET = "type: fleet\nname: cpu\nnodes: 1\nbackends: [sim]\nresources:\n  cpu: 4\n  gpu: 0\nblocks: 4\n"
UTC = datetime.UTC


def task(apply, commands: str = "[sleep 60]", cron: str = '"*/5 * * * *"', extra: str = "", expect: int = 202) -> dict:
    return apply(f"type: task\nname: nightly\ncommands: {commands}\nresources: {{cpu: 1, gpu: 0}}\n"
                 f"schedule:\n  cron: {cron}\n{extra}", expect=expect)


def run_of(api) -> dict:
    return api.get(f"{P}/runs/nightly/").json()


def parse(value: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


def make_due(ago: datetime.timedelta = datetime.timedelta(seconds=1)) -> None:
    """Time passes: the run's next time is now in the past (``ago`` ago)."""
    assert Run.objects.filter(name="nightly", status="pending", next_triggered_at__isnull=False).update(
        next_triggered_at=timezone.now() - ago) == 1


def next_five_minute_mark(after: datetime.datetime) -> datetime.datetime:
    mark = after.replace(second=0, microsecond=0) + datetime.timedelta(minutes=1)
    while mark.minute % 5:
        mark += datetime.timedelta(minutes=1)
    return mark


def finish_sim_jobs() -> None:
    """The sim's clock for the running workloads: their scripts' sleeps are over now."""
    assert SimJob.objects.filter(state="running").update(finishes_at=timezone.now()) >= 1


def kinds() -> list[str]:
    return list(Event.objects.filter(resource_type="run", resource_name="nightly").order_by("id")
                .values_list("kind", flat=True))


@pytest.fixture
def fleet(sim_backend, apply, reconcile):
    apply(FLEET)
    reconcile()


def test_a_scheduled_task_waits_pending_with_no_jobs_until_the_next_mark(fleet, api, apply, reconcile):
    before = timezone.now()
    plan = api.post(f"{P}/apply/?dry_run=true", data="type: task\nname: nightly\ncommands: [x]\n"
                    "schedule:\n  cron: '*/5 * * * *'\n", content_type="application/yaml").json()
    body = task(apply)
    after = timezone.now()
    run = body["resource"]
    assert run["status"] == "pending", run
    at = parse(run["next_triggered_at"])
    assert at in (next_five_minute_mark(before), next_five_minute_mark(after))
    assert at.second == 0 and at.minute % 5 == 0 and at > after
    assert parse(plan["plan"]["next_triggered_at"]) in (next_five_minute_mark(before), next_five_minute_mark(after))
    assert plan["resource"] is None and Run.objects.count() == 1  # the dry run wrote nothing
    assert "next run at" in run["status_message"]
    reconcile()  # nothing is due yet
    assert (run_of(api)["status"], Job.objects.count()) == ("pending", 0)
    assert api.get(f"{P}/runs/nightly/jobs/").json()["results"] == []


def test_at_its_time_the_run_runs_then_goes_back_to_pending_with_the_next_time(fleet, api, apply, reconcile):
    task(apply)
    make_due()
    reconcile()
    run = run_of(api)
    assert (run["status"], run["next_triggered_at"]) == ("running", None), run
    job = Job.objects.get()
    assert (job.name, job.submission_num, job.status) == ("nightly-0-0", 0, "running")
    assert Instance.objects.get().busy_blocks == job.blocks > 0
    finish_sim_jobs()  # the task's `sleep 60` is over
    reconcile()
    run = run_of(api)
    assert (run["status"], run["termination_reason"], run["finished_at"]) == ("pending", "", None), run
    at = parse(run["next_triggered_at"])
    assert at > timezone.now() and at.minute % 5 == 0 and at.second == 0
    assert Job.objects.get().status == "done"  # kept as history; its blocks were given back
    assert Instance.objects.get().busy_blocks == 0
    assert kinds() == ["submitted", "triggered", "provisioning", "running", "scheduled"]
    scheduled = Event.objects.filter(resource_name="nightly", kind="scheduled").get()
    assert at.isoformat() in scheduled.message and "all_jobs_done" in scheduled.message
    reconcile()  # waiting again: nothing moves, the history is not derived again
    assert (run_of(api)["status"], run_of(api)["next_triggered_at"]) == ("pending", run["next_triggered_at"])


def test_the_next_time_submits_new_jobs_with_the_next_submission_number(fleet, api, apply, reconcile):
    task(apply, commands="[exit 0]")
    for _ in range(2):
        make_due()
        reconcile()
        assert run_of(api)["status"] == "pending"
    jobs = list(Job.objects.order_by("submission_num").values_list("name", "submission_num", "status"))
    assert jobs == [("nightly-0-0", 0, "done"), ("nightly-0-0", 1, "done")]
    assert kinds().count("triggered") == 2 and kinds().count("scheduled") == 2


def test_a_failed_run_waits_for_its_next_time_too(fleet, api, apply, reconcile):
    task(apply, commands="[exit 3]")
    make_due()
    reconcile()
    run = run_of(api)
    assert (run["status"], run["termination_reason"]) == ("pending", ""), run
    assert parse(run["next_triggered_at"]) > timezone.now()
    assert Job.objects.get().status == "failed"
    assert Instance.objects.get().busy_blocks == 0
    message = Event.objects.get(resource_name="nightly", kind="scheduled").message
    assert message.startswith("job_failed; next run at")


def test_a_missed_time_fires_once(fleet, api, apply, reconcile):
    task(apply, commands="[exit 0]")
    make_due(ago=datetime.timedelta(hours=1))  # twelve 5-minute marks passed while the server was down
    reconcile()
    assert Job.objects.count() == 1
    assert parse(run_of(api)["next_triggered_at"]) > timezone.now()
    assert trigger_scheduled_runs() == 0


def test_a_user_stop_of_a_waiting_run_ends_it_at_once(fleet, api, apply, reconcile):
    task(apply)
    body = api.post(f"{P}/runs/nightly/stop/", {}, format="json").json()
    assert (body["status"], body["termination_reason"], body["next_triggered_at"]) == (
        "terminated", "stopped_by_user", None), body
    Run.objects.filter(name="nightly").update(next_triggered_at=timezone.now() - datetime.timedelta(minutes=1))
    reconcile()  # a finished run is never triggered, whatever its next time says
    assert (run_of(api)["status"], Job.objects.count()) == ("terminated", 0)


def test_a_user_stop_of_a_running_run_ends_it_for_good(fleet, api, apply, reconcile):
    task(apply, commands="[sleep 60]")
    make_due()
    reconcile()
    assert run_of(api)["status"] == "running"
    api.post(f"{P}/runs/nightly/stop/", {}, format="json")
    reconcile()
    run = run_of(api)
    assert (run["status"], run["termination_reason"], run["next_triggered_at"]) == (
        "terminated", "stopped_by_user", None), run
    assert "scheduled" not in kinds()
    assert Instance.objects.get().busy_blocks == 0


def test_max_duration_counts_from_each_trigger_and_re_arms(fleet, api, apply, reconcile):
    task(apply, commands="[sleep 60]", extra="max_duration: 1m\n")
    Run.objects.filter(name="nightly").update(submitted_at=timezone.now() - datetime.timedelta(hours=2))
    reconcile()
    assert run_of(api)["status"] == "pending"  # waiting is not running: max_duration does not count it
    make_due()
    reconcile()
    assert run_of(api)["status"] == "running"  # counted from the trigger, not from the first submission
    Run.objects.filter(name="nightly").update(submitted_at=timezone.now() - datetime.timedelta(minutes=2))
    reconcile()
    run = run_of(api)
    assert (run["status"], Job.objects.get().status) == ("pending", "terminated"), run  # stopped by the server
    assert "max_duration_exceeded" in Event.objects.get(resource_name="nightly", kind="scheduled").message


def test_the_earliest_of_several_cron_expressions_wins():
    spec = {"schedule": {"cron": ["0 3 * * *", "30 1 * * *"]}}
    at = datetime.datetime(2025, 1, 1, 2, 0, tzinfo=UTC)
    assert next_trigger(spec, at) == datetime.datetime(2025, 1, 1, 3, 0, tzinfo=UTC)
    assert next_trigger(spec, at.replace(hour=1)) == datetime.datetime(2025, 1, 1, 1, 30, tzinfo=UTC)
    assert next_trigger(spec, at.replace(hour=3)) == datetime.datetime(2025, 1, 2, 1, 30, tzinfo=UTC)
    # Strictly after: a run ending on a mark waits for the next one; any time zone is read as UTC.
    paris = datetime.timezone(datetime.timedelta(hours=1))
    assert next_trigger(spec, datetime.datetime(2025, 1, 1, 2, 30, tzinfo=paris)) == at.replace(hour=3)
    assert next_trigger({"schedule": None}, at) is None


def test_two_cron_entries_through_the_api(fleet, api, apply):
    before = timezone.now()
    run = task(apply, cron='["0 0 1 1 *", "*/5 * * * *"]')["resource"]
    assert parse(run["next_triggered_at"]) in (next_five_minute_mark(before), next_five_minute_mark(timezone.now()))


def test_an_invalid_cron_is_a_400_naming_it(fleet, api, apply):
    body = task(apply, cron='["61 * * * *"]', expect=400)
    assert (body["code"], body["field"]) == ("invalid_configuration", "schedule.cron[0]"), body
    assert not Run.objects.exists()


def test_re_applying_an_active_scheduled_run_is_a_409_until_it_is_stopped(fleet, api, apply):
    task(apply)
    conflict = task(apply, commands="[exit 0]", expect=409)
    assert conflict["code"] == "run_active"
    api.post(f"{P}/runs/nightly/stop/", {}, format="json")
    replaced = task(apply, commands="[exit 0]")
    assert (replaced["action"], replaced["resource"]["status"]) == ("replace", "pending")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_workers_at_once_trigger_a_run_once(fleet, apply):
    task(apply, commands="[sleep 60]", extra="nodes: 2\n")
    make_due()
    run_id = Run.objects.get(name="nightly").pk
    barrier, won, errors = threading.Barrier(2), [], []

    def worker(use_pass: bool) -> None:
        try:
            barrier.wait()
            won.append(trigger_scheduled_runs() if use_pass else int(trigger_run(run_id)))
        except Exception as err:  # noqa: BLE001 - reported by the test
            errors.append(repr(err))
        finally:
            connection.close()

    for _ in range(5):  # several rounds: the two workers meet at a different moment each time
        threads = [threading.Thread(target=worker, args=(n == 0,)) for n in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        assert sum(won) == 1, won
        assert sorted(Job.objects.values_list("job_num", "submission_num")) == [(0, 0), (1, 0)]
        assert Event.objects.filter(resource_name="nightly", kind="triggered").count() == 1
        Job.objects.all().delete()
        Event.objects.filter(kind="triggered").delete()
        Run.objects.filter(pk=run_id).update(status="pending", next_triggered_at=timezone.now())
        won.clear()


def test_each_trigger_gets_its_own_retries(fleet, api, apply, reconcile):
    """The failures of an earlier trigger do not count against the retry limits of a later one."""
    task(apply, commands="[exit 3]", extra="retry:\n  on_events: [error]\n  max_attempts: 1\n  interval: 0s\n")
    for trigger in (1, 2):
        make_due()
        reconcile()
        assert run_of(api)["status"] == "pending"
        # Each trigger: the first submission and its one retry, both failed.
        assert Job.objects.filter(status="failed").count() == 2 * trigger
