"""Operational endpoints: ``/healthz`` (database and broker answer, workers keep up) and ``/metrics``."""

import os

from celery import current_app as celery_app
from django.db import connection
from django.db.models import Count
from django.http import HttpResponse, JsonResponse
from django.utils import timezone

from ops.health import last_passes, worker_health


def _database_ok() -> tuple[bool, str]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True, "ok"
    except Exception as err:  # noqa: BLE001 - any failure means unhealthy
        return False, str(err)


def _broker_ok() -> tuple[bool, str]:
    try:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
            if conn.transport.driver_type == "filesystem":
                # The filesystem transport "connects" to anything: check its folder is writable.
                folder = conn.transport_options["data_folder_out"]
                if not os.access(folder, os.W_OK):
                    return False, f"broker folder {folder} is not writable"
        return True, "ok"
    except Exception as err:  # noqa: BLE001
        return False, str(err)


def _workers() -> tuple[bool, str, list[str]]:
    try:
        health = worker_health()
    except Exception as err:  # noqa: BLE001 - the database check reports the cause
        return False, f"unknown: {err}", []
    return health.healthy, health.detail, health.stalled


def healthz(request):
    database, database_detail = _database_ok()
    broker, broker_detail = _broker_ok()
    workers, workers_detail, stalled = _workers() if database else (False, "unknown: no database", [])
    healthy = database and broker and workers
    body = {"status": "ok" if healthy else "unhealthy", "database": database_detail, "broker": broker_detail,
            "workers": workers_detail}
    if stalled:
        body["stalled"] = stalled
    return JsonResponse(body, status=200 if healthy else 503)


def _gauge(lines: list[str], name: str, help_text: str, rows, label: str) -> None:
    _samples(lines, name, help_text, [({label: value}, count) for value, count in rows])


def _samples(lines: list[str], name: str, help_text: str, samples) -> None:
    """A gauge from ``[({label: value}, number)]``, label values escaped as the text format wants."""
    lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
    for labels, number in samples:
        text = ",".join(f'{key}="{_escape(value)}"' for key, value in labels.items())
        lines.append(f"{name}{{{text}}} {number}")


def _escape(value) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _service_gauges(lines: list[str]) -> None:
    """Health (1 for the current one, 0 for the others) and replica counts of active services, in one query."""
    from runs.models import RUN_ACTIVE_STATES, Run, RunHealth, RunType
    from runs.selectors import runs_with_replica_counts

    services = list(runs_with_replica_counts(
        Run.objects.filter(type=RunType.SERVICE, status__in=RUN_ACTIVE_STATES).select_related("project")
    ).order_by("project__name", "name"))
    health, replicas = [], []
    for run in services:
        labels = {"project": run.project.name, "run": run.name}
        current = run.health or RunHealth.DOWN  # not derived yet: no replica has run
        health += [({**labels, "health": h}, int(h == current)) for h in RunHealth.values]
        counts = {"desired": run.desired_replicas, "running": run.running_replicas, "ready": run.ready_replicas}
        replicas += [({**labels, "state": state}, n) for state, n in counts.items()]
    _samples(lines, "stackyard_service_health", "health of active services (1 for the current one)", health)
    _samples(lines, "stackyard_service_replicas", "replicas of active services: desired, running, ready", replicas)


def metrics(request):
    """Resource counts by status, read from the database so every process reports the same figures."""
    from core.models import Event
    from fleets.models import Instance
    from runs.models import Job, Run
    from volumes.models import Volume

    lines: list[str] = []
    for model, name in ((Instance, "instances"), (Volume, "volumes"), (Run, "runs"), (Job, "jobs")):
        rows = model.objects.values_list("status").annotate(n=Count("id")).order_by("status")
        _gauge(lines, f"stackyard_{name}", f"{name} by status", rows, "status")
    _service_gauges(lines)
    now = timezone.now()
    ages = [(name, f"{(now - finished).total_seconds():.1f}") for name, finished in sorted(last_passes().items())]
    _gauge(lines, "stackyard_reconciler_last_pass_age_seconds", "seconds since a pass of the task last finished",
           ages, "task")
    corrections = Event.objects.filter(kind="block_count_corrected").count()
    lines += ["# HELP stackyard_block_count_corrections_total block counts corrected by verification",
              "# TYPE stackyard_block_count_corrections_total counter",
              f"stackyard_block_count_corrections_total {corrections}"]
    return HttpResponse("\n".join(lines) + "\n", content_type="text/plain; version=0.0.4")
