"""Kick background work by task name after the transaction that needs it commits, coalesced.

``kick("runs.place_jobs")`` names the Celery task, so a lower layer can trigger work above it
without importing it. Beat runs every reconciler periodically (level-triggered), so a kick that is
lost because the broker is down only delays the work; it must never fail the request that asked
for it. A thousand commits in a second need one pass, not a thousand: while a pass of a task is
queued and not yet started, further kicks of that task are dropped (``QueuedKick``).
"""

import logging
from datetime import timedelta

from celery import current_app
from celery.signals import task_prerun
from django.db import transaction
from django.utils import timezone

from core.models import QueuedKick

logger = logging.getLogger(__name__)
KICK_STALE_SECONDS = 10


def kick(task_name: str) -> None:
    """Queue one pass of the task named ``task_name`` once the current transaction commits,
    unless a pass of it is already queued."""
    transaction.on_commit(lambda: _send(task_name))


def _send(task_name: str) -> None:
    now = timezone.now()
    try:
        fresh = now - timedelta(seconds=KICK_STALE_SECONDS)
        if QueuedKick.objects.filter(task_name=task_name, queued_at__gte=fresh).exists():
            return
        # One statement (INSERT ... ON CONFLICT DO UPDATE) on PostgreSQL and SQLite alike.
        QueuedKick.objects.bulk_create([QueuedKick(task_name=task_name, queued_at=now)], update_conflicts=True,
                                       unique_fields=["task_name"], update_fields=["queued_at"])
        current_app.tasks[task_name].apply_async(retry=False)
    except Exception:  # noqa: BLE001 - any broker failure is recovered by the next beat tick
        logger.warning("could not enqueue %s; the next reconcile pass will pick it up", task_name)
        _forget_kick(task_name)


def _forget_kick(task_name: str) -> None:
    try:
        QueuedKick.objects.filter(task_name=task_name).delete()
    except Exception:  # noqa: BLE001 - never block a task or a request on this bookkeeping
        logger.debug("could not clear the queued kick of %s", task_name, exc_info=True)


@task_prerun.connect
def _pass_started(sender=None, **kwargs) -> None:
    """A pass is starting: from now on, new work needs a new kick."""
    _forget_kick(sender.name)
