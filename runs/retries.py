"""Replica-scoped retry: whether a failed replica is retried, after how long, and its resubmission
(decided by ``runs.jobs`` when a failure is recorded, and by the periodic pass of ``runs.supervisor``).

When a replica's job fails and the run's ``retry`` covers that kind of failure (``on_events``:
``no-capacity``, ``interruption``, ``error``), only that replica is resubmitted: a new job row per
node (the next ``submission_num``), placeable after the retry interval. Its other nodes, if any, are
stopped first; the other replicas are never touched. The interval starts at ``retry.interval`` and
doubles with each failure in a row of that replica, up to ``MAX_INTERVAL_SECONDS``. Past
``retry.duration`` (counted from the first failure in a row) or ``retry.max_attempts`` retries in a
row, the run fails with ``retry_limit_exceeded``. Without ``retry``, or for a failure it does not
cover, the run fails fast (``runs.jobs``).

A failure "in a row" is one whose submission ran less than ``STREAK_RESET_SECONDS``: a replica that
crashes once a week gets a fresh budget each time, one that crash-loops backs off and hits the limits.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from core.events import record_event
from core.kicks import kick
from runs.models import (
    Job,
    JobStatus,
    JobTerminationReason,
    Run,
)

MAX_INTERVAL_SECONDS = 600
STREAK_RESET_SECONDS = 600
FAILED_STATES = (JobStatus.FAILED, JobStatus.ABORTED, JobStatus.TERMINATED)

# The retry event a job's failure counts as (``retry.on_events``); a reason not listed is never retried.
EVENT_OF_REASON = {
    JobTerminationReason.NO_CAPACITY: "no-capacity",
    JobTerminationReason.INTERRUPTED: "interruption",
    JobTerminationReason.EXITED_WITH_ERROR: "error",
    JobTerminationReason.SERVER_ERROR: "error",
    JobTerminationReason.VOLUME_ERROR: "error",
    JobTerminationReason.STOPPED_BY_SERVER: "error",
}


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Whether a failed replica is retried, after how long, and if not, whether a limit was hit."""

    retry: bool
    delay: float = 0
    attempt: int = 0  # the retry this would be, 1 for the first
    limit: str = ""  # why retry stopped: "retry duration 1h exceeded", "max_attempts 3 reached"


def failures_in_a_row(history: list[Job]) -> tuple[int, datetime | None]:
    """How many of a node's latest submissions failed in a row (see the module docstring), and when
    the first of them was submitted. ``history`` is oldest first."""
    count, started = 0, None
    for job in reversed(history):
        if job.status not in FAILED_STATES:
            break
        count, started = count + 1, job.submitted_at
        ran = (job.finished_at - job.started_at).total_seconds() if job.started_at and job.finished_at else 0
        if ran >= STREAK_RESET_SECONDS:
            break
    return count, started


def verdict(run: Run, failed: Job, history: list[Job]) -> Verdict:
    """Retry the replica of ``failed`` (the failure that ended it), given its node's ``history``?"""
    retry = run.spec.get("retry")
    if not retry or EVENT_OF_REASON.get(failed.termination_reason) not in retry["on_events"]:
        return Verdict(False)
    count, started = failures_in_a_row(history)
    count = max(count, 1)
    if started is not None and (timezone.now() - started).total_seconds() > retry["duration"]:
        return Verdict(False, limit=f"retry duration {retry['duration']} s exceeded after {count} failure(s) in a row")
    if retry.get("max_attempts") is not None and count > retry["max_attempts"]:
        return Verdict(False, limit=f"max_attempts {retry['max_attempts']} reached ({count} failures in a row)")
    delay = min(MAX_INTERVAL_SECONDS, retry["interval"] * 2 ** (count - 1))
    return Verdict(True, delay=delay, attempt=count)


def history_of(job: Job) -> list[Job]:
    """Every submission of ``job``'s node of its replica, oldest first. A scheduled run starts over at each
    trigger (``runs.schedules``): the submissions of an earlier trigger are not part of this one's history."""
    jobs = Job.objects.filter(run_id=job.run_id, replica_num=job.replica_num, job_num=job.job_num)
    if job.run.spec.get("schedule"):
        jobs = jobs.filter(submitted_at__gte=job.run.submitted_at)
    return list(jobs.order_by("submission_num"))


def retry_clock_started(job: Job) -> datetime:
    """Since when a waiting job's retry duration counts: its first submission in a row of failures."""
    if job.submission_num == 0:
        return job.submitted_at
    _, started = failures_in_a_row(history_of(job)[:-1])
    return started or job.submitted_at


def resubmit_replica(run: Run, nodes: list[Job], decision: Verdict, why: str) -> bool:
    """A new submission of every node of a replica (all finished), placeable after the verdict's
    delay. Two workers deciding at once make one: the submission number is unique."""
    replica = nodes[0].replica_num
    not_before = timezone.now() + timedelta(seconds=decision.delay) if decision.delay > 0 else None
    message = (f"retry {decision.attempt} of replica {replica} after {why}"
               + (f"; placed after {decision.delay:g} s" if decision.delay else ""))
    # The retry stays in the replica's group: same resources, same commands.
    rows = [Job(project_id=run.project_id, run_id=run.pk, name=node.name, replica_num=replica, job_num=node.job_num,
                submission_num=node.submission_num + 1, spec_version=run.spec_version, status_message=message,
                lease_until=not_before, group=node.group) for node in nodes]
    with transaction.atomic():
        Run.objects.select_for_update().filter(pk=run.pk).first()  # one decision at a time per run
        if Job.objects.filter(run_id=run.pk, replica_num=replica,
                              submission_num__gt=min(node.submission_num for node in nodes)).exists():
            return False  # another worker resubmitted it first
        Job.objects.bulk_create(rows)
        record_event(project=run.project_id, resource_type="run", resource_name=run.name, kind="retrying",
                     message=message)
        kick("runs.place_jobs")
    return True
