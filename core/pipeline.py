"""The one reconcile pipeline every background loop runs: claim, call, record.

1. **Claim** due rows fairly: oldest ``last_processed_at`` first, ``SKIP LOCKED``, a lease carrying
   this pass's owner token (``core.leases``).
2. **Call** the provider outside any transaction, many rows per driver call where the driver can.
3. **Record** each outcome with a compare-and-swap. When the swap loses (the row changed during the
   call) the reconciler still keeps what the provider said: a created resource's id is always
   written, and a resource made for a row that is gone or terminating is terminated, never forgotten.

Then the pipeline gives the rows back: due again at once, after a poll interval, or after an
exponential backoff when the step failed (the error is shown in ``status_message``). A pass loops
over batches until nothing is due or its time budget is spent; a row is handled at most once per
pass. Level-triggered like a Kubernetes controller: a pass rebuilds everything from the rows and
the provider as they are now, so a killed worker or a lost message only delays the work.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable

from django.db.models import F, Q
from django.utils import timezone

from core import leases

logger = logging.getLogger(__name__)
BACKOFF_BASE_SECONDS = 2
BACKOFF_MAX_SECONDS = 300
DEFAULT_BUDGET_SECONDS = 20


def backoff(failures: int) -> float:
    """Seconds to wait after ``failures`` consecutive failures: 2, 4, 8 ... at most 5 minutes."""
    return float(min(BACKOFF_BASE_SECONDS * 2 ** max(0, min(failures, 20) - 1), BACKOFF_MAX_SECONDS))


@dataclasses.dataclass
class Step:
    """What recording one row decided.

    ``changed``: the row moved (counted in the pass's result). ``after``: seconds before the row is
    due again (a poll interval). ``failed``: an error to show on the row; the row then rests for the
    backoff of its consecutive failures (or ``after``, if larger).
    """

    changed: bool = False
    after: float = 0
    failed: str | None = None


class Drivers:
    """One driver per backend for the length of a pass; a backend whose driver cannot be built
    (an invalid stored config) gives that error instead, as every call on it would.

    ``errors`` is the provider's error type: a call that raises it answers that error for its rows;
    anything else is a bug and fails the whole batch (see ``Reconciler._batch``).
    """

    def __init__(self, factory: Callable, *, errors: type[Exception]):
        self._factory = factory
        self._errors = errors
        self._drivers: dict[int, object] = {}

    def get(self, backend):
        if backend.pk not in self._drivers:
            try:
                self._drivers[backend.pk] = self._factory(backend)
            except Exception as err:  # noqa: BLE001 - reported per row by the caller
                self._drivers[backend.pk] = err
        driver = self._drivers[backend.pk]
        if isinstance(driver, Exception):
            raise driver
        return driver

    def ask(self, rows: list, backend_of: Callable, call: Callable) -> dict[int, object]:
        """One provider call per backend: ``call(driver, group)`` answers ``{row.pk: answer}`` for the
        rows of one backend; a call that fails answers its error for every row of its group."""
        answers: dict[int, object] = {}
        for group in group_by(rows, lambda row: backend_of(row).pk).values():
            try:
                answers.update(call(self.get(backend_of(group[0])), group))
            except self._errors as err:
                answers.update((row.pk, err) for row in group)
        return answers


def group_by(rows: Iterable, key: Callable) -> dict:
    """Rows grouped by ``key(row)``, keeping their order: one driver call per group."""
    groups: dict = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    return groups


class Reconciler(abc.ABC):
    """One background loop. Subclasses say which rows are due, how to call the provider for a
    batch, and how to record one outcome; ``run`` does the rest, the same way for every loop."""

    model: type
    batch_size: int = 50
    lease_seconds: int = leases.DEFAULT_LEASE_SECONDS
    # The column a failed step's error is shown in (when the model has it).
    message_field: str = "status_message"

    @abc.abstractmethod
    def due(self) -> Q:
        """The rows that need this loop now."""

    def load(self, pks: list[int]) -> list:
        """The claimed rows, freshly read (subclasses add ``select_related``)."""
        return list(self.model.objects.filter(pk__in=pks).order_by("pk"))

    @abc.abstractmethod
    def call(self, rows: list) -> dict[int, object]:
        """Ask the provider about the batch, outside any transaction: row pk -> result or error."""

    def record(self, row, result) -> Step:
        """Record one row's result (compare-and-swap, events) and say when it is due again.

        Every loop implements this or ``record_batch``."""
        raise NotImplementedError

    def record_batch(self, rows: list, results: dict[int, object]) -> dict[int, Step]:
        """Record a whole batch; loops that can record many rows in one transaction override this."""
        steps = {}
        for row in rows:
            try:
                steps[row.pk] = self.record(row, results.get(row.pk))
            except Exception as err:  # noqa: BLE001 - one bad row must not stop the batch
                logger.exception("%s: recording %s failed", type(self).__name__, row)
                steps[row.pk] = Step(failed=f"internal error, retrying: {err}")
        return steps

    def after_batch(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Work to do once a batch is recorded and given back (for example telling the rows' owners,
        so that what waits on this batch does not wait for the whole pass)."""

    def finish(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Work to do once per pass, after every batch."""

    # --- the pipeline itself ------------------------------------------------------------------

    def run(self, *, budget: float = DEFAULT_BUDGET_SECONDS) -> int:
        """Claim, call and record batches until nothing is due or ``budget`` seconds are spent."""
        owner, started = leases.new_owner(), timezone.now()
        not_yet_this_pass = Q(last_processed_at__isnull=True) | Q(last_processed_at__lt=started)
        deadline = time.monotonic() + budget
        changed = 0
        try:
            while time.monotonic() < deadline:
                pks = leases.claim(self.model, self.due() & not_yet_this_pass, owner=owner, limit=self.batch_size,
                                   lease_seconds=self.lease_seconds)
                if not pks:
                    break
                changed += self._batch(pks, owner)
        finally:
            self.finish()
        return changed

    def keep_lease(self) -> None:
        """Call between slow provider calls in a batch: the lease is extended before it can run out,
        so no other worker takes the rows over and repeats calls already made."""
        if time.monotonic() - self._extended_at > self.lease_seconds / 3:
            leases.extend(self.model, self._batch_pks, owner=self._owner, seconds=self.lease_seconds)
            self._extended_at = time.monotonic()

    def _batch(self, pks: list[int], owner: str) -> int:
        self._batch_pks, self._owner, self._extended_at = pks, owner, time.monotonic()
        rows = self.load(pks)
        try:
            results = self.call(rows)
        except Exception as err:  # noqa: BLE001 - a bug in one batch must not stop the loop
            logger.exception("%s: call failed for %d row(s)", type(self).__name__, len(rows))
            steps = {row.pk: Step(failed=f"internal error, retrying: {err}") for row in rows}
        else:
            steps = self.record_batch(rows, results)
        self._give_back(rows, steps, owner)
        self.after_batch()
        return sum(1 for step in steps.values() if step.changed)

    def _give_back(self, rows: list, steps: dict[int, Step], owner: str) -> None:
        has_message = any(f.name == self.message_field for f in self.model._meta.fields)
        healthy: dict[float, list[int]] = {}
        for row in rows:
            step = steps[row.pk]
            if step.failed is None:
                healthy.setdefault(step.after, []).append(row.pk)
                continue
            extra = {self.message_field: step.failed} if has_message else {}
            leases.release(self.model, [row.pk], owner=owner, after=max(step.after, backoff(row.failures + 1)),
                           failures=F("failures") + 1, **extra)
        for after, pks in healthy.items():
            leases.release(self.model, pks, owner=owner, after=after, failures=0)
