"""Operational endpoints: ``/healthz`` (database and broker answer, workers keep up) and ``/metrics``."""

import os

from celery import current_app as celery_app
from django.db import connection
from django.http import HttpResponse, JsonResponse

from ops.health import worker_health
from ops.metrics import exposition


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


def metrics(request):
    """Prometheus' text format (``ops.metrics``): state from the database, events from every process."""
    body, content_type = exposition()
    return HttpResponse(body, content_type=content_type)
