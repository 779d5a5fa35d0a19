"""Pass heartbeats: every background task records when a pass of it last finished (``PassHeartbeat``).

A worker whose pool is stuck, or that no longer receives messages, stops writing them, and
``/healthz`` says so. Only a pass that succeeds counts: a reconciler that fails every time is not
making progress either. Recording never fails the task: a database error only loses one beat.
"""

import logging

from celery.signals import task_success
from django.utils import timezone

from core.models import PassHeartbeat

logger = logging.getLogger(__name__)


def record_pass(task_name: str, worker: str = "") -> None:
    """Note that a pass of ``task_name`` just finished (one INSERT ... ON CONFLICT DO UPDATE)."""
    PassHeartbeat.objects.bulk_create(
        [PassHeartbeat(task_name=task_name, finished_at=timezone.now(), worker=worker)],
        update_conflicts=True, unique_fields=["task_name"], update_fields=["finished_at", "worker"],
    )


@task_success.connect
def _pass_finished(sender=None, **kwargs) -> None:
    try:
        record_pass(sender.name, getattr(sender.request, "hostname", None) or "")
    except Exception:  # noqa: BLE001 - a lost heartbeat must never fail the pass it reports
        logger.warning("could not record the finished pass of %s", getattr(sender, "name", sender), exc_info=True)
