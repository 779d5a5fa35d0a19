"""Claiming rows for background work without holding a transaction across a cloud call.

A worker claims a batch in a short transaction (``SELECT ... FOR UPDATE SKIP LOCKED`` on
PostgreSQL; SQLite's IMMEDIATE transactions serialize instead) by setting ``lease_until``; other
workers skip leased rows until the lease expires, so a killed worker's rows are picked up again.
"""

from datetime import timedelta

from django.db import models, transaction
from django.db.models import Q
from django.utils import timezone

DEFAULT_LEASE_SECONDS = 60


def claim(model: type[models.Model], condition: Q, *, limit: int = 50, lease_seconds: int = DEFAULT_LEASE_SECONDS):
    """Lease up to ``limit`` rows matching ``condition``; return their primary keys."""
    now = timezone.now()
    with transaction.atomic():
        free = Q(lease_until__isnull=True) | Q(lease_until__lt=now)
        ids = list(
            model.objects.select_for_update(skip_locked=True)
            .filter(condition & free)
            .order_by("pk")
            .values_list("pk", flat=True)[:limit]
        )
        if ids:
            model.objects.filter(pk__in=ids).update(lease_until=now + timedelta(seconds=lease_seconds))
    return ids


def release(model: type[models.Model], pk: int) -> None:
    """Give a claimed row back (its work is done or will be retried on the next pass)."""
    model.objects.filter(pk=pk).update(lease_until=None)
