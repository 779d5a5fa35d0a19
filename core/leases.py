"""Claiming rows for background work without holding a transaction across a cloud call.

A worker claims a batch in a short transaction (``SELECT ... FOR UPDATE SKIP LOCKED`` on
PostgreSQL; SQLite's IMMEDIATE transactions serialize instead): each row gets a lease
(``lease_until``) and the claimer's token (``lease_owner``). Other workers skip leased rows until
the lease expires, so a killed worker's rows are picked up again. Claims are fair: the row
processed longest ago (``last_processed_at``, never-processed first) goes first, so no row starves
behind others however many there are. Only the owner of a lease releases or extends it: a worker
whose lease expired and was taken over cannot clear the new owner's lease.

``lease_until`` doubles as "not before": releasing a row with ``after=`` seconds leaves it alone
until then (the poll interval of a healthy row, the backoff of a failing one).
"""

import uuid
from datetime import timedelta

from django.db import models, transaction
from django.db.models import F, Q
from django.utils import timezone

DEFAULT_LEASE_SECONDS = 60


class Leased(models.Model):
    """The columns a reconciled row needs: its lease, the lease's owner, fairness and backoff."""

    lease_until = models.DateTimeField(null=True, blank=True, editable=False)
    lease_owner = models.CharField(max_length=32, blank=True, default="", editable=False)
    last_processed_at = models.DateTimeField(null=True, blank=True, editable=False)
    failures = models.PositiveIntegerField(default=0, editable=False,
                                           help_text="consecutive failed attempts (drives the backoff)")

    class Meta:
        abstract = True


def new_owner() -> str:
    """A token naming one claimer (one pass of one worker)."""
    return uuid.uuid4().hex


def free(now=None) -> Q:
    """Rows nobody holds and nobody asked to leave alone until later."""
    now = now or timezone.now()
    return Q(lease_until__isnull=True) | Q(lease_until__lte=now)


def claim(model: type[models.Model], condition: Q, *, owner: str, limit: int = 50,
          lease_seconds: int = DEFAULT_LEASE_SECONDS) -> list[int]:
    """Lease up to ``limit`` free rows matching ``condition`` to ``owner``, oldest-processed first."""
    now = timezone.now()
    with transaction.atomic():
        ids = list(
            model.objects.select_for_update(skip_locked=True)
            .filter(condition & free(now))
            .order_by(F("last_processed_at").asc(nulls_first=True), "pk")
            .values_list("pk", flat=True)[:limit]
        )
        if ids:
            model.objects.filter(pk__in=ids).update(lease_until=now + timedelta(seconds=lease_seconds),
                                                    lease_owner=owner, last_processed_at=now)
    return ids


def release(model: type[models.Model], pks, *, owner: str, after: float = 0, **changes) -> int:
    """Give rows back if ``owner`` still holds them; ``after`` seconds of rest before they are due again."""
    rest = timezone.now() + timedelta(seconds=after) if after > 0 else None
    return model.objects.filter(pk__in=list(pks), lease_owner=owner).update(lease_until=rest, lease_owner="",
                                                                           **changes)


def extend(model: type[models.Model], pks, *, owner: str, seconds: int = DEFAULT_LEASE_SECONDS) -> int:
    """Keep holding rows for another ``seconds`` (a long call); only the owner can."""
    until = timezone.now() + timedelta(seconds=seconds)
    return model.objects.filter(pk__in=list(pks), lease_owner=owner).update(lease_until=until)
