"""Kick background work by task name after the transaction that needs it commits, coalesced.

``kick("runs.place_jobs")`` names the Celery task, so a lower layer can trigger work above it
without importing it. Beat runs every reconciler periodically (level-triggered), so a kick that is
lost because the broker is down only delays the work; it must never fail the request that asked
for it. A thousand commits in a second need one pass, not a thousand: while a pass of a task is
queued and not yet started, further kicks of that task are dropped (``QueuedKick``).
"""

import logging
import threading
import time
from datetime import timedelta

from celery import current_app
from celery.signals import task_prerun
from django.db import connection, transaction
from django.utils import timezone

from core.models import QueuedKick

logger = logging.getLogger(__name__)
KICK_STALE_SECONDS = 10
# After a failed send, kicks are skipped for this long: beat redoes the work once the broker is back,
# and a request must not wait on a broker connection timeout again and again.
BROKER_DOWN_SECONDS = 10
_broker_down_until = 0.0
_discovery_lock = threading.Lock()


def kick(task_name: str) -> None:
    """Queue one pass of the task named ``task_name`` once the current transaction commits,
    unless a pass of it is already queued."""
    transaction.on_commit(lambda: _send(task_name))


def _send(task_name: str) -> None:
    global _broker_down_until
    if time.monotonic() < _broker_down_until:
        return
    try:
        if not _claim_kick(task_name):
            return  # a pass is queued already: it will see this commit's work
        _registered_task(task_name).apply_async(retry=False)
    except Exception:  # noqa: BLE001 - any broker failure is recovered by the next beat tick
        logger.warning("could not enqueue %s; the next reconcile pass will pick it up", task_name)
        _broker_down_until = time.monotonic() + BROKER_DOWN_SECONDS
        _forget_kick(task_name)


def _claim_kick(task_name: str) -> bool:
    """Mark a pass of the task as queued unless one was in the last ``KICK_STALE_SECONDS``; True if
    this caller must send it. One statement on PostgreSQL and SQLite alike: of two concurrent kicks,
    exactly one inserts (or refreshes a stale row) and gets a row back."""
    now = timezone.now()
    table = connection.ops.quote_name(QueuedKick._meta.db_table)
    adapt = connection.ops.adapt_datetimefield_value
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (task_name, queued_at) VALUES (%s, %s) ON CONFLICT (task_name) DO UPDATE "
            f"SET queued_at = excluded.queued_at WHERE {table}.queued_at < %s RETURNING task_name",
            [task_name, adapt(now), adapt(now - timedelta(seconds=KICK_STALE_SECONDS))])
        return cursor.fetchone() is not None


def _registered_task(task_name: str):
    # A web process never imports the apps' tasks modules (a kick names its task), and Celery's
    # autodiscovery is lazy: it runs in workers only, unless asked for. One thread discovers; the
    # others wait for it rather than look into a half-filled registry.
    if task_name not in current_app.tasks:
        with _discovery_lock:
            current_app.loader.import_default_modules()
    return current_app.tasks[task_name]


def _forget_kick(task_name: str) -> None:
    try:
        QueuedKick.objects.filter(task_name=task_name).delete()
    except Exception:  # noqa: BLE001 - never block a task or a request on this bookkeeping
        logger.debug("could not clear the queued kick of %s", task_name, exc_info=True)


@task_prerun.connect
def _pass_started(sender=None, **kwargs) -> None:
    """A pass is starting: from now on, new work needs a new kick."""
    _forget_kick(sender.name)
