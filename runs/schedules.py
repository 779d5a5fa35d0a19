"""Cron-scheduled runs (dstack's ``schedule: {cron: [...]}``, in UTC).

A run with a ``schedule`` is submitted ``pending`` with no jobs and ``next_triggered_at`` set: the
earliest next time of any of its cron expressions. The trigger pass (``runs.trigger_scheduled_runs``,
on beat) submits the jobs of every run whose time has come, exactly as ``submit_run`` does, with the
next ``submission_num``. When those jobs end (done, failed, or stopped by the server) the run does not
finish: it is re-armed, ``pending`` again with the next time after now. Only a user's stop or abort
ends it for good (``terminated``).

``next_triggered_at`` is set exactly while a run waits for its time: the trigger clears it, the
re-arm sets it again, and a stop clears it. A trigger missed while the server was down fires once
on the next pass (the time is in the past), and the re-arm then looks forward from now, so the
missed slots are not replayed one by one.
"""

from __future__ import annotations

from datetime import UTC, datetime

from croniter import croniter
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from core.events import record_event
from core.kicks import kick
from core.models import Event
from core.transitions import compare_and_swap
from runs.models import Job, Run, RunStatus, RunTerminationReason
from runs.submissions import run_jobs

# A stop that ends a scheduled run for good; any other ending (done, failed, a server-side stop such
# as max_duration) waits for the next time.
USER_STOPS = (RunTerminationReason.STOPPED_BY_USER, RunTerminationReason.ABORTED_BY_USER)
BATCH_SIZE = 200


def next_trigger(spec: dict, after: datetime) -> datetime | None:
    """The first time strictly after ``after`` that any of the spec's cron expressions names (UTC);
    None for a run without a schedule."""
    schedule = spec.get("schedule")
    if not schedule:
        return None
    start = after.astimezone(UTC)
    return min(croniter(cron, start).get_next(datetime) for cron in schedule["cron"])


def waiting_message(at: datetime) -> str:
    return f"scheduled: next run at {at:%Y-%m-%d %H:%M} UTC"


def _event(run: Run, kind: str, message: str, actor: str = "") -> None:
    record_event(project=run.project_id, resource_type="run", resource_name=run.name, kind=kind, message=message,
                 actor=actor)


def rearm_if_scheduled(run: Run) -> bool:
    """A scheduled run whose jobs have all ended goes back to ``pending`` with its next time, instead
    of finishing; True when ``run`` is such a run (moved here, unless another worker moved it first).

    False for a run without a schedule, and for one the user stopped: that one ends as usual. The
    run's jobs stay as its history; their blocks and volumes were given back as they finished.
    """
    if not run.spec.get("schedule") or run.termination_reason in USER_STOPS:
        return False
    at = next_trigger(run.spec, timezone.now())
    with transaction.atomic():
        if compare_and_swap(Run, pk=run.pk, allowed_from=(run.status,), to=RunStatus.PENDING, next_triggered_at=at,
                            termination_reason="", terminating_since=None, finished_at=None,
                            status_message=waiting_message(at)):
            why = run.termination_reason or RunTerminationReason.ALL_JOBS_DONE
            _event(run, "scheduled", f"{why}; next run at {at.isoformat()}")
            run.status, run.next_triggered_at = RunStatus.PENDING, at
    return True


def trigger_scheduled_runs() -> int:
    """One pass (beat): submit the jobs of every scheduled run whose time has come; returns how many.

    Level-triggered and safe on several workers at once (``trigger_due_runs``)."""
    triggered = len(trigger_due_runs())
    if triggered == BATCH_SIZE:
        kick("runs.trigger_scheduled_runs")  # more may be due: the next pass goes on at once
    return triggered


def trigger_run(run_id: int) -> bool:
    """``trigger_due_runs`` for one run: True if this call triggered it."""
    return bool(trigger_due_runs(run_ids=[run_id]))


def trigger_due_runs(*, run_ids=None, limit: int = BATCH_SIZE) -> list[int]:
    """Submit the jobs of up to ``limit`` due runs (among ``run_ids``, if given) in one transaction, exactly
    as ``submit_run`` makes them, with the next ``submission_num``; the ids of the runs triggered.

    Two workers at once trigger a run once: the due rows are locked and read again under the lock
    (``SKIP LOCKED``: a worker takes the others, never waits), so a run triggered or stopped meanwhile
    is no longer due. On SQLite the transaction takes the write lock at once, which serializes them."""
    now = timezone.now()
    with transaction.atomic():
        due = Run.objects.filter(status=RunStatus.PENDING, next_triggered_at__lte=now)
        if run_ids is not None:
            due = due.filter(pk__in=list(run_ids))
        runs = list(due.select_for_update(skip_locked=True).order_by("next_triggered_at", "pk")[:limit])
        if not runs:
            return []
        pks = [run.pk for run in runs]
        last = dict(Job.objects.filter(run_id__in=pks).order_by().values("run_id").annotate(last=Max("submission_num"))
                    .values_list("run_id", "last"))
        # ``submitted_at`` restarts: it is when the run's current jobs were submitted (max_duration counts from it).
        Run.objects.filter(pk__in=pks).update(status=RunStatus.SUBMITTED, next_triggered_at=None, submitted_at=now,
                                              status_message="waiting for placement", updated_at=now)
        Job.objects.bulk_create([job for run in runs for job in run_jobs(run, submission_num=last.get(run.pk, -1) + 1)])
        Event.objects.bulk_create(Event(project_id=run.project_id, resource_type="run", resource_name=run.name,
                                        kind="triggered", message=f"schedule time {run.next_triggered_at.isoformat()}")
                                  for run in runs)
        kick("runs.place_jobs")
    return pks


def end_schedule(run: Run) -> None:
    """A user's stop ends a scheduled run for good: it waits for no next time, and one already ending
    for the server's reasons (a failed job) ends ``terminated`` rather than waiting for its next time."""
    if not run.spec.get("schedule"):
        return
    Run.objects.filter(pk=run.pk).update(next_triggered_at=None)
    if Run.objects.filter(pk=run.pk, status=RunStatus.TERMINATING).exclude(termination_reason__in=USER_STOPS).update(
            termination_reason=RunTerminationReason.STOPPED_BY_USER, status_message="stopped by the user"):
        run.termination_reason = RunTerminationReason.STOPPED_BY_USER
    run.next_triggered_at = None
