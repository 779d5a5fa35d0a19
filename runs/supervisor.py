"""The periodic pass over active runs (``runs.retry_failed_replicas``, on beat and kicked by every job
failure): runs past their ``max_duration`` start terminating, so do runs with a job whose GPU utilization
stayed low for their ``utilization_policy``'s window (``runs.utilization``), and runs with a failed replica
are derived again, which retries the replica or fails the run (``runs.jobs``, ``runs.retries``)."""

from datetime import timedelta

from django.db.models import Exists, OuterRef
from django.utils import timezone

from runs.jobs import refresh_run_statuses, start_run_termination
from runs.models import JOB_FINISHED_STATES, RUN_FINISHED_STATES, Job, JobStatus, JobTerminationReason, Run, RunStatus
from runs.utilization import enforce_utilization_policies


def retry_failed_replicas() -> int:
    """One pass (beat, and kicked on every job failure): runs whose ``max_duration`` is over start
    terminating; runs with a failed latest job are derived again, which retries the failed replicas
    (or fails the run). Level-triggered and idempotent; returns how many runs it looked at."""
    # A scheduled run waiting for its time runs nothing (its max_duration counts from its next trigger).
    active = Run.objects.exclude(status__in=(*RUN_FINISHED_STATES, RunStatus.TERMINATING)).exclude(
        status=RunStatus.PENDING, next_triggered_at__isnull=False)
    ended = 0
    now = timezone.now()
    for run in active.filter(spec__max_duration__isnull=False).only("pk", "project_id", "name", "spec", "status",
                                                                     "submitted_at", "terminating_since"):
        limit = run.spec.get("max_duration")
        if limit is not None and run.submitted_at + timedelta(seconds=limit) <= now:
            ended += start_run_termination(run=run, reason="max_duration_exceeded",
                                           message=f"max_duration {limit} s exceeded")
    ended += enforce_utilization_policies(now)
    later = Job.objects.filter(run_id=OuterRef("run_id"), replica_num=OuterRef("replica_num"),
                               job_num=OuterRef("job_num"), submission_num__gt=OuterRef("submission_num"))
    failing = set(Job.objects.filter(run__in=active, status__in=JOB_FINISHED_STATES).exclude(status=JobStatus.DONE)
                  .exclude(termination_reason=JobTerminationReason.SCALED_DOWN)
                  .exclude(Exists(later)).values_list("run_id", flat=True).distinct())
    refresh_run_statuses(failing)
    return ended + len(failing)
