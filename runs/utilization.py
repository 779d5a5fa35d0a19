"""What running jobs do with their GPUs and whether anyone is attached, and the two policies built on it.

Each poll of a running job (``runs.workloads.Poller``) hands the driver's figures to ``record_activity``:

* ``gpu_utilization`` (the mean % over the job's GPUs) is stored on the job when it changes (rounded to a
  whole percent, so a steady job costs no write per poll), and ``low_utilization_since`` is set when it
  first drops below the run's ``utilization_policy.min_gpu_utilization`` and cleared when it goes back
  up. A figure the driver cannot give (None) clears it too: only a reported low utilization counts.
  Once a job has been low for the policy's whole ``time_window``, its run is stopped with
  ``terminated_due_to_utilization_policy``.
* ``inactive_seconds`` (how long nobody has been attached over SSH or an IDE) stops a dev environment
  with ``inactivity_duration_exceeded`` once it reaches the run's ``inactivity_duration``. It is not
  stored: the driver knows it afresh at every poll.

Both stops go through ``runs.jobs.start_run_termination``, the path ``max_duration`` takes: the run goes
``terminating`` with the reason, an event and a ``status_message`` naming the numbers, and its jobs are
stopped (volumes detached first) as on any stop. ``enforce_utilization_policies`` is the same window
check, level-triggered, for the supervisor's periodic pass.
"""

from datetime import datetime, timedelta

from django.utils import timezone

from backends.drivers.base import JobState
from runs.jobs import start_run_termination
from runs.models import RUN_FINISHED_STATES, Job, JobStatus, Run, RunStatus, RunTerminationReason

# A run can still be stopped by a policy: not finished, and not already stopping for another reason.
STOPPABLE_RUN_STATES = [s for s in RunStatus if s not in RUN_FINISHED_STATES and s != RunStatus.TERMINATING]


def record_activity(job: Job, state: JobState) -> bool:
    """Record one poll's figures for a running job (``job.run`` loaded) and enforce its run's policies.

    True when the run was stopped: its status is to be derived again."""
    now = timezone.now()
    _record_utilization(job, state.gpu_utilization, now)
    return _stop_if_inactive(job, state.inactive_seconds) or _stop_if_low_for_window(job, now)


def _record_utilization(job: Job, percent: float | None, now: datetime) -> None:
    percent = None if percent is None else float(round(percent))
    policy = job.run.spec.get("utilization_policy")
    low = percent is not None and policy is not None and percent < policy["min_gpu_utilization"]
    since = (job.low_utilization_since or now) if low else None
    if percent == job.gpu_utilization and since == job.low_utilization_since:
        return
    Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING).update(gpu_utilization=percent,
                                                                   low_utilization_since=since)
    job.gpu_utilization, job.low_utilization_since = percent, since


def _stop_if_inactive(job: Job, inactive_seconds: int | None) -> bool:
    """A dev environment nobody has been attached to for its ``inactivity_duration`` is stopped."""
    limit = job.run.spec.get("inactivity_duration")
    if limit is None or inactive_seconds is None or inactive_seconds < limit:
        return False
    return _stop_run(job.run, RunTerminationReason.INACTIVITY_DURATION_EXCEEDED,
                     f"inactive for {inactive_seconds} s (no SSH or IDE session attached to job {job.name}), "
                     f"exceeding inactivity_duration of {limit} s")


def low_for_window(job: Job, now: datetime) -> bool:
    """The job's GPU utilization has stayed below its run's policy for the policy's whole time window."""
    policy = job.run.spec.get("utilization_policy")
    return (policy is not None and job.low_utilization_since is not None
            and job.low_utilization_since + timedelta(seconds=policy["time_window"]) <= now)


def _stop_if_low_for_window(job: Job, now: datetime) -> bool:
    if not low_for_window(job, now):
        return False
    policy = job.run.spec["utilization_policy"]
    last = "unknown" if job.gpu_utilization is None else f"{job.gpu_utilization:g}%"
    return _stop_run(job.run, RunTerminationReason.UTILIZATION_POLICY,
                     f"GPU utilization of job {job.name} below {policy['min_gpu_utilization']}% for "
                     f"{policy['time_window']} s (utilization_policy; last reported {last})")


def _stop_run(run: Run, reason: str, message: str) -> bool:
    # ``run`` may be a copy read before a user's stop: a run that is stopping already keeps its reason,
    # decided by the one compare-and-swap that moves it.
    return start_run_termination(run=run, reason=reason, message=message, keep_terminating=True)


def enforce_utilization_policies(now: datetime | None = None) -> int:
    """Stop every run with a running job low for its policy's whole window (level-triggered, for the
    supervisor's pass: a stop never waits for the next poll); returns how many runs it stopped."""
    now = now or timezone.now()
    jobs = (Job.objects.filter(status=JobStatus.RUNNING, low_utilization_since__isnull=False,
                               run__status__in=STOPPABLE_RUN_STATES)
            .select_related("run").order_by("run_id", "pk"))
    stopped: set[int] = set()
    for job in jobs:
        if job.run_id not in stopped and _stop_if_low_for_window(job, now):
            stopped.add(job.run_id)
    return len(stopped)
