"""The figures an operator watches, read from the database for ``/metrics`` and the admin dashboard.

Each is one or two GROUP BY queries on indexed columns, so a scrape or a dashboard view costs
the same number of queries whatever the number of runs, jobs or instances. Reading the database,
not process memory, makes every web process report the same figures.
"""

from dataclasses import dataclass

from django.db.models import Count, Sum

from backends.models import Orphan
from backends.orphans import OPEN_STATES
from core.models import Event
from fleets.models import (
    FLEET_FINISHED_STATES,
    INSTANCE_ACTIVE_STATES,
    INSTANCE_ASSIGNABLE_STATES,
    Fleet,
    FleetStatus,
    Instance,
)
from runs.models import JOB_ACTIVE_STATES, RUN_ACTIVE_STATES, Job, Run, RunHealth, RunType
from runs.selectors import runs_with_replica_counts
from volumes.models import ATTACHMENT_LIVE_STATES, VOLUME_LIVE_STATES, Volume, VolumeAttachment

# The resources counted by status (gauge ``stackyard_<name>``) and the statuses counted: the unfinished
# ones. Finished rows are history that only grows; counting them at every scrape would read all of it,
# while these statuses are few rows found through an index whose first column is ``status``.
STATUS_MODELS = {
    "fleets": (Fleet, [s for s in FleetStatus.values if s not in FLEET_FINISHED_STATES]),
    "instances": (Instance, INSTANCE_ACTIVE_STATES),
    "volumes": (Volume, VOLUME_LIVE_STATES),
    "volume_attachments": (VolumeAttachment, ATTACHMENT_LIVE_STATES),
    "runs": (Run, RUN_ACTIVE_STATES),
    "jobs": (Job, JOB_ACTIVE_STATES),
}


def counts_by_status(name: str) -> dict[str, int]:
    """Unfinished rows of the resource ``name`` per status, every unfinished status included (0 when none)."""
    model, statuses = STATUS_MODELS[name]
    counts = dict.fromkeys(statuses, 0)
    counts.update(model.objects.filter(status__in=statuses).order_by().values_list("status")
                  .annotate(n=Count("id")).values_list("status", "n"))
    return counts


@dataclass(frozen=True)
class FleetBlocks:
    """Blocks of a fleet's instances that can hold jobs (pending to busy), and how many jobs hold."""

    project: str
    fleet: str
    busy: int
    total: int

    @property
    def idle(self) -> int:
        return self.total - self.busy

    @property
    def utilization(self) -> float:
        return self.busy / self.total if self.total else 0.0

    @property
    def busy_percent(self) -> int:
        return round(100 * self.utilization)


def fleet_blocks() -> list[FleetBlocks]:
    """Every fleet that is not finished, with 0 blocks while it has no instance up or coming up.

    Two queries: the fleets, and the blocks of usable instances grouped by fleet (found through the
    status index, never reading the terminated instances of the past)."""
    fleets = (Fleet.objects.exclude(status__in=FLEET_FINISHED_STATES).order_by("project__name", "name")
              .values_list("pk", "project__name", "name"))
    blocks = dict((fleet, (busy, total)) for fleet, busy, total in (
        Instance.objects.filter(status__in=INSTANCE_ASSIGNABLE_STATES).order_by().values_list("fleet_id")
        .annotate(busy=Sum("busy_blocks"), total=Sum("total_blocks"))))
    return [FleetBlocks(project, name, *blocks.get(pk, (0, 0))) for pk, project, name in fleets]


def active_services() -> list[Run]:
    """Services that are not finished, with their replica counts, in one query."""
    return list(runs_with_replica_counts(
        Run.objects.filter(type=RunType.SERVICE, status__in=RUN_ACTIVE_STATES).select_related("project")
    ).order_by("project__name", "name"))


def service_health(run: Run) -> str:
    return run.health or RunHealth.DOWN  # not derived yet: no replica has run


def services_by_health(services: list[Run]) -> dict[str, int]:
    counts = dict.fromkeys(RunHealth.values, 0)
    for run in services:
        counts[service_health(run)] += 1
    return counts


def open_orphans() -> list[tuple[str, str, str, str, int]]:
    """``(project, backend, kind, status, count)`` of the orphans the last scans found and did not
    resolve (``backends.orphans``): the database's record, no provider call."""
    return list(Orphan.objects.filter(status__in=OPEN_STATES).order_by()
                .values_list("backend__project__name", "backend__name", "kind", "status")
                .annotate(n=Count("id")).order_by("backend__project__name", "backend__name", "kind", "status"))


def block_count_corrections() -> int:
    return Event.objects.filter(kind="block_count_corrected").count()


def latest_events(limit: int = 20) -> list[Event]:
    return list(Event.objects.select_related("project").order_by("-created_at", "-id")[:limit])


def service_health_counts() -> dict[str, int]:
    """Active services per health in one GROUP BY (``services_by_health`` without the rows)."""
    counts = dict.fromkeys(RunHealth.values, 0)
    rows = (Run.objects.filter(type=RunType.SERVICE, status__in=RUN_ACTIVE_STATES).order_by()
            .values_list("health").annotate(n=Count("id")))
    for health, n in rows:
        counts[health or RunHealth.DOWN] += n
    return counts
