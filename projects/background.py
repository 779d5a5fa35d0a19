"""Kick background work after the transaction that needs it commits.

Beat runs every reconciler periodically (level-triggered), so a kick that is lost because the
broker is down only delays the work; it must never fail the request that asked for it.
"""

import logging

from django.db import transaction

logger = logging.getLogger(__name__)


def enqueue_on_commit(task, *args) -> None:
    """Send ``task(*args)`` to the broker once the current transaction commits."""

    def send() -> None:
        try:
            task.apply_async(args=args, retry=False)
        except Exception:  # noqa: BLE001 - any broker failure is recovered by the next beat tick
            logger.warning("could not enqueue %s%r; the next reconcile pass will pick it up", task.name, args)

    transaction.on_commit(send)
