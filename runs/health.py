"""Readiness of service replicas and the health of services.

A replica is ``ready`` when its latest job is running and its probes (if any) have passed
``ready_after`` times in a row; a failed probe makes it not ready again. A service is ``healthy``
when every desired replica is ready, ``degraded`` when some are, ``down`` when none is. Health is
stored on the run, so that each change writes an event and the API and metrics read it.
"""

from django.db import transaction
from django.db.models import F

from core.events import record_event
from runs.models import Job, JobStatus, Run, RunHealth, RunType


def ready_after(spec: dict) -> int:
    """How many passes in a row make a replica ready: the largest ``ready_after`` of its probes."""
    return max((probe.get("ready_after") or 1 for probe in spec.get("probes") or []), default=1)


def record_probes(job: Job, passing: bool | None) -> bool:
    """Record one poll's probe outcome for a running job; True if its readiness changed.

    ``passing`` is None when the job has no probes: then it is ready while running."""
    # A steady replica (ready and passing, or failing and counted at zero) costs no write per poll.
    if (passing is None or passing) and job.ready:
        return False
    if passing is False and not job.ready and job.probe_passes == 0:
        return False
    running = Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING)
    if passing is None:
        return bool(running.filter(ready=False).update(ready=True))
    if not passing:
        return bool(running.update(ready=False, probe_passes=0)) and job.ready
    threshold = ready_after(job.run.spec)
    running.update(probe_passes=F("probe_passes") + 1)
    return bool(running.filter(ready=False, probe_passes__gte=threshold).update(ready=True))


def replica_counts(run: Run, latest: list[Job]) -> dict:
    """``{"desired", "running", "ready"}`` from the latest job of each (replica, node)."""
    replicas: dict[int, list[Job]] = {}
    for job in latest:
        replicas.setdefault(job.replica_num, []).append(job)
    running = [jobs for jobs in replicas.values() if all(j.status == JobStatus.RUNNING for j in jobs)]
    ready = [jobs for jobs in running if all(j.ready for j in jobs)]
    return {"desired": run.desired_replicas, "running": len(running), "ready": len(ready)}


def health_of(counts: dict) -> str:
    if counts["ready"] >= counts["desired"]:
        return RunHealth.HEALTHY
    return RunHealth.DEGRADED if counts["ready"] else RunHealth.DOWN


def update_health(run: Run, latest: list[Job]) -> None:
    """Store a service's health if it changed, with an event saying how many replicas are ready."""
    if run.type != RunType.SERVICE:
        return
    counts = replica_counts(run, latest)
    health = health_of(counts)
    if health == run.health:
        return
    with transaction.atomic():
        if Run.objects.filter(pk=run.pk, health=run.health).update(health=health):
            record_event(project=run.project_id, resource_type="run", resource_name=run.name, kind="health",
                         message=f"{health}: {counts['ready']}/{counts['desired']} replicas ready "
                                 f"({counts['running']} running)")
            run.health = health
