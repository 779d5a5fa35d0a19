"""``/metrics`` in Prometheus' text format, written by prometheus-client.

Two kinds of figures. Gauges of state (resources by status, blocks per fleet, services by health,
orphans, reconciler pass ages) are read from the database at each scrape by ``DatabaseCollector``
(``ops.figures``: a fixed number of indexed queries). Events that no table remembers (placement and
stop latency, Celery task durations and failures) are observed as they happen (``core.metrics``)
in whichever process they happen in: with ``PROMETHEUS_MULTIPROC_DIR`` set, every process writes
its samples there and ``MultiProcessCollector`` adds them up; without it, this process's default
registry is all there is.
"""

import os

from django.utils import timezone
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from ops import figures
from ops.health import last_passes


class DatabaseCollector:
    """The state gauges, computed from the database when scraped."""

    def describe(self):
        return []  # registering must not query the database

    def collect(self):
        for name in figures.STATUS_MODELS:
            gauge = GaugeMetricFamily(f"stackyard_{name}", f"{name.replace('_', ' ')} not finished, by status",
                                      labels=["status"])
            for status, count in figures.counts_by_status(name).items():
                gauge.add_metric([status], count)
            yield gauge
        yield from _fleet_gauges(figures.fleet_blocks())
        yield from _service_gauges(figures.active_services())
        yield _orphan_gauge()
        ages = GaugeMetricFamily("stackyard_reconciler_last_pass_age_seconds",
                                 "seconds since a pass of the task last finished", labels=["task"])
        now = timezone.now()
        for task, finished in sorted(last_passes().items()):
            ages.add_metric([task], (now - finished).total_seconds())
        yield ages
        yield CounterMetricFamily("stackyard_block_count_corrections", "block counts corrected by verification",
                                  value=figures.block_count_corrections())


def _fleet_gauges(fleets: list[figures.FleetBlocks]):
    labels = ["project", "fleet"]
    busy = GaugeMetricFamily("stackyard_fleet_busy_blocks", "blocks held by jobs, per fleet", labels=labels)
    total = GaugeMetricFamily("stackyard_fleet_blocks", "blocks of the fleet's instances that can hold jobs",
                              labels=labels)
    ratio = GaugeMetricFamily("stackyard_fleet_block_utilization", "busy blocks / blocks (0 without blocks)",
                              labels=labels)
    for fleet in fleets:
        key = [fleet.project, fleet.fleet]
        busy.add_metric(key, fleet.busy)
        total.add_metric(key, fleet.total)
        ratio.add_metric(key, fleet.utilization)
    return busy, total, ratio


def _service_gauges(services):
    """Health (1 for the current one, 0 for the others) and replicas per active service, and the
    count of services per health."""
    health = GaugeMetricFamily("stackyard_service_health", "health of active services (1 for the current one)",
                               labels=["project", "run", "health"])
    replicas = GaugeMetricFamily("stackyard_service_replicas", "replicas of active services: desired, running, ready",
                                 labels=["project", "run", "state"])
    for run in services:
        current = figures.service_health(run)
        for value in figures.RunHealth.values:
            health.add_metric([run.project.name, run.name, value], int(value == current))
        counts = {"desired": run.desired_replicas, "running": run.running_replicas, "ready": run.ready_replicas}
        for state, n in counts.items():
            replicas.add_metric([run.project.name, run.name, state], n)
    by_health = GaugeMetricFamily("stackyard_services_by_health", "active services per health", labels=["health"])
    for value, count in figures.services_by_health(services).items():
        by_health.add_metric([value], count)
    return health, replicas, by_health


def _orphan_gauge():
    gauge = GaugeMetricFamily("stackyard_orphans", "provider resources tagged as ours that no row owns, as the "
                              "last orphan scans found them (found: still there; terminated: by Stackyard)",
                              labels=["project", "backend", "kind", "status"])
    for *labels, count in figures.open_orphans():
        gauge.add_metric(labels, count)
    return gauge


class _ThisProcess:
    """The default registry: this process's own samples (and its CPU and memory) when there is no
    multiprocess folder."""

    def collect(self):
        return REGISTRY.collect()


def exposition() -> tuple[bytes, str]:
    """The text a scrape gets, and its content type."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector())
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    else:
        registry.register(_ThisProcess())
    return generate_latest(registry), CONTENT_TYPE_LATEST
