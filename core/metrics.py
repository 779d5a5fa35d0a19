"""The metrics the code observes as things happen: placement and stop latency, Celery task durations and failures.

Gauges of state (resources by status, blocks, orphans...) are read from the database at each scrape
(``ops.metrics``); what lives here are events no table keeps the history of. Any layer may import
this module: it imports no app.

Workers, beat and the web server are separate processes. When ``PROMETHEUS_MULTIPROC_DIR`` is set
(``runstack`` sets it), prometheus-client keeps each process's samples in files there and
``/metrics`` adds them up; without it (tests, ``manage.py runserver``) they live in this process.
The variable must be set before prometheus-client is imported: it chooses its storage then.
"""

import time
from datetime import datetime

from django.db import transaction
from django.utils import timezone
from prometheus_client import Counter, Histogram, disable_created_metrics

disable_created_metrics()  # no ``_created`` series: multiprocess mode has none, and nothing here reads them

# From sub-second (an idle block ready) to an hour (a new instance in a busy region, a slow detach).
LATENCY_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, float("inf"))
TASK_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, float("inf"))

JOB_PLACEMENT_SECONDS = Histogram(
    "stackyard_job_placement_seconds", "seconds from a job's submission to its assignment to an instance",
    buckets=LATENCY_BUCKETS)
RUN_STOP_SECONDS = Histogram(
    "stackyard_run_stop_seconds", "seconds from a run going terminating to its end, by the status it ended in",
    ["status"], buckets=LATENCY_BUCKETS)
TASK_SECONDS = Histogram(
    "stackyard_task_duration_seconds", "seconds each Celery task took, by task name", ["task"], buckets=TASK_BUCKETS)
TASK_FAILURES = Counter("stackyard_task_failures", "Celery tasks that raised, by task name", ["task"])


def _seconds(since: datetime | None, until: datetime) -> float:
    return max(0.0, (until - since).total_seconds()) if since else 0.0


def jobs_placed(jobs, at: datetime) -> None:
    """Observe the placement latency of ``jobs`` (assigned at ``at``) once their transaction commits:
    an assignment rolled back (a gang that did not fit whole) was never a placement."""
    latencies = [_seconds(job.submitted_at, at) for job in jobs]
    transaction.on_commit(lambda: [JOB_PLACEMENT_SECONDS.observe(s) for s in latencies])


def runs_ended(runs, status: str) -> None:
    """Observe the stop latency of terminating ``runs`` that just ended in ``status``, on commit. A run
    whose ``terminating_since`` the caller did not read ended in the same call that stopped it: 0 s."""
    now = timezone.now()
    latencies = [_seconds(run.terminating_since, now) for run in runs]
    transaction.on_commit(lambda: [RUN_STOP_SECONDS.labels(status=status).observe(s) for s in latencies])


# --- Celery tasks (signal handlers connected by config.celery) ------------------------------------

_started: dict[str, float] = {}


def task_started(task_id=None, **kwargs) -> None:
    _started[task_id] = time.monotonic()


def task_finished(task_id=None, task=None, **kwargs) -> None:
    started = _started.pop(task_id, None)
    if started is not None and task is not None:
        TASK_SECONDS.labels(task=task.name).observe(time.monotonic() - started)


def task_failed(sender=None, **kwargs) -> None:
    TASK_FAILURES.labels(task=getattr(sender, "name", "unknown")).inc()


def watch_celery_tasks() -> None:
    """Connect the task signals (each fires in the process that runs the task: a pool process, or the
    caller for an eager ``apply()``)."""
    from celery import signals

    signals.task_prerun.connect(task_started, weak=False, dispatch_uid="stackyard-metrics-prerun")
    signals.task_postrun.connect(task_finished, weak=False, dispatch_uid="stackyard-metrics-postrun")
    signals.task_failure.connect(task_failed, weak=False, dispatch_uid="stackyard-metrics-failure")
