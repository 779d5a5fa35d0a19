"""Whether the workers keep up: the age of the last finished pass of each fast reconciler.

Beat runs every fast reconciler (``settings.FAST_RECONCILERS``) each ``RECONCILE_INTERVAL``
seconds, and a worker records each pass it finishes (``core.heartbeats``). One that has not
finished a pass for ``settings.STALL_SECONDS`` is stalled: its worker is stuck, dead, or not
consuming from the broker.

The clock of a reconciler starts at the later of its last finished pass and the start of this web
process. So a fresh install, or a stack that was stopped for a week, is given ``STALL_SECONDS``
after the web starts for the workers to come up and finish a first pass; after that, a missing
or old heartbeat is a stall.
"""

from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.utils import timezone

from core.models import PassHeartbeat

PROCESS_STARTED_AT = timezone.now()


@dataclass
class WorkerHealth:
    """``healthy`` is False only when a reconciler is stalled; ``detail`` says which and since when."""

    healthy: bool
    detail: str
    stalled: list[str] = field(default_factory=list)


def last_passes() -> dict[str, datetime]:
    """When each task that ever finished a pass last finished one."""
    return dict(PassHeartbeat.objects.values_list("task_name", "finished_at"))


def _age(finished_at: datetime | None, now: datetime) -> str:
    return "never" if finished_at is None else f"{(now - finished_at).total_seconds():.0f} s ago"


def worker_health(now: datetime | None = None) -> WorkerHealth:
    """Stalled fast reconcilers, counted from their last pass or from this process's start."""
    now = now or timezone.now()
    limit = settings.STALL_SECONDS
    passes = last_passes()
    watched = settings.FAST_RECONCILERS
    stalled = [name for name in watched
               if (now - max(passes.get(name, PROCESS_STARTED_AT), PROCESS_STARTED_AT)).total_seconds() > limit]
    if stalled:
        ages = ", ".join(f"{name} (last pass {_age(passes.get(name), now)})" for name in stalled)
        return WorkerHealth(False, f"stalled: no pass finished in the last {limit:g} s by {ages}", stalled)
    waiting = [name for name in watched if name not in passes]
    if waiting:
        return WorkerHealth(True, f"no pass finished yet: {', '.join(waiting)} (allowed for {limit:g} s after start)")
    return WorkerHealth(True, "ok")
