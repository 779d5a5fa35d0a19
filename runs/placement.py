"""Placement: give each submitted job the blocks it needs on an instance of a fleet it may use.

A job takes the smallest number of blocks whose share satisfies its ``resources``; a multi-node
job takes whole idle instances, all nodes of a replica at once. When no instance has room, an
elastic fleet (``nodes: min..max``) below its maximum grows by one instance for the job. Jobs are
claimed with a lease (SKIP LOCKED), and blocks are taken with a guarded relative update, so any
number of workers may place at once without overbooking an instance.
"""

import json
import time
from dataclasses import dataclass, field

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from backends.models import BackendStatus
from backends.selectors import named
from core import leases
from core.kicks import kick
from core.pipeline import DEFAULT_BUDGET_SECONDS
from fleets.models import INSTANCE_ASSIGNABLE_STATES, Fleet, FleetStatus, Instance
from fleets.provisioning import grow_fleet
from fleets.resources import blocks_needed, mismatch
from runs import retries
from runs.groups import job_spec
from runs.jobs import assign_jobs, finish_job, refresh_run_statuses
from runs.models import Job, JobStatus, JobTerminationReason, Run, RunStatus
from volumes.choice import VolumeChoice, network_mounts
from volumes.models import Volume

PLACEABLE_RUN_STATES = (RunStatus.SUBMITTED, RunStatus.PENDING, RunStatus.PROVISIONING, RunStatus.RUNNING)


@dataclass
class Attempt:
    """Why each candidate did not fit, to tell the user what was looked for."""

    reasons: list[str] = field(default_factory=list)
    retry: bool = False  # a provider could not be asked: try again rather than give up

    def add(self, where: str, why: str) -> None:
        self.reasons.append(f"{where}: {why}")


class Pass:
    """One placement pass: candidate instances are read once per kind of run and kept current in
    memory as this pass assigns blocks (the database guard still decides every assignment)."""

    def __init__(self):
        self.candidates: dict[str, list[Instance]] = {}
        self.touched_runs: set[int] = set()
        self.plan: list[tuple[Job, Instance, int]] = []
        self.volumes: dict[int, list[tuple[str, Volume]]] = {}
        self.volumes_taken: set[int] = set()  # promised to a job in this pass, not yet flushed
        self.placed = 0

    def volume_choice(self, run: Run) -> VolumeChoice | None:
        """The run's network volume candidates (read fresh for each replica), or None if it mounts none."""
        if not network_mounts(run.spec):
            return None
        return VolumeChoice(project_id=run.project_id, spec=run.spec, taken=self.volumes_taken)

    def instances_for(self, run: Run) -> list[Instance]:
        key = json.dumps([run.project_id] + [run.spec.get(k) for k in FILTER_KEYS], sort_keys=True)
        if key not in self.candidates:
            self.candidates[key] = list(_candidate_instances(run))
        # Most loaded first (to pack blocks), then cheapest.
        return sorted(self.candidates[key], key=lambda i: (-i.busy_blocks, i.price, i.pk))

    def assign(self, job: Job, instance: Instance, blocks: int,
               volumes: list[tuple[str, Volume]] | None = None) -> None:
        """Plan an assignment (with the volumes chosen for the job's mount points); ``flush``
        carries the plan out."""
        self.plan.append((job, instance, blocks))
        instance.busy_blocks += blocks
        if volumes:
            self.volumes[job.pk] = volumes
            self.volumes_taken.update(volume.pk for _, volume in volumes)

    def flush(self) -> None:
        """Carry out the planned assignments, a batch per transaction, in ascending instance order."""
        plan, self.plan = sorted(self.plan, key=lambda item: item[1].pk), []
        volumes, self.volumes = self.volumes, {}
        for start in range(0, len(plan), ASSIGNMENTS_PER_TRANSACTION):
            self.placed += len(assign_jobs(plan[start:start + ASSIGNMENTS_PER_TRANSACTION], volumes))
        self.volumes_taken.clear()  # attached (or lost to another job) now: the database knows

    def forget(self) -> None:
        """Read the candidates again (a new instance appeared): the plan so far is carried out first."""
        self.flush()
        self.candidates.clear()


ASSIGNMENTS_PER_TRANSACTION = 50
FILTER_KEYS = ("fleets", "regions", "availability_zones", "instance_types", "backends", "spot_policy", "max_price")


def place_jobs(*, limit: int = 200, budget: float = DEFAULT_BUDGET_SECONDS) -> int:
    """Place submitted jobs, ``limit`` per batch, until none is waiting or ``budget`` seconds are
    spent; returns how many were placed. Jobs are claimed fairly (longest waiting first) with a
    lease of this pass's own, and each is considered at most once per pass."""
    owner, started = leases.new_owner(), timezone.now()
    condition = (Q(status=JobStatus.SUBMITTED, instance__isnull=True, run__status__in=PLACEABLE_RUN_STATES)
                 & (Q(last_processed_at__isnull=True) | Q(last_processed_at__lt=started)))
    deadline, placed = time.monotonic() + budget, 0
    while time.monotonic() < deadline:
        ids = leases.claim(Job, condition, owner=owner, limit=limit, lease_seconds=60)
        if not ids:
            break
        placed += _place_batch(ids, owner)
    if placed:
        _kick_followers()
    return placed


def _place_batch(ids: list[int], owner: str) -> int:
    jobs = Job.objects.filter(pk__in=ids).select_related("run").order_by("run_id", "replica_num", "job_num")
    groups: dict[tuple[int, int], list[Job]] = {}
    for job in jobs:
        # A replica group's resources and spot policy stand in for the service's (runs.groups). Each job
        # has its own copy of its run (select_related), and placement never saves a run.
        job.run.spec = job_spec(job)
        groups.setdefault((job.run_id, job.replica_num), []).append(job)
    current = Pass()
    try:
        for group in groups.values():
            _place_replica(group, current)
        current.flush()
    finally:
        leases.release(Job, ids, owner=owner)
    refresh_run_statuses(current.touched_runs)
    return current.placed


def _place_replica(jobs: list[Job], current: Pass) -> None:
    run = jobs[0].run
    current.touched_runs.add(run.pk)
    if run.spec.get("nodes", 1) > 1:
        if network_mounts(run.spec):  # refused at submit; a run stored before that is told why
            for job in jobs:
                finish_job(job=job, to=JobStatus.FAILED, reason=JobTerminationReason.VOLUME_ERROR,
                           message="a network volume attaches to one instance: multi-node tasks cannot mount one")
        elif len(jobs) == run.spec["nodes"]:  # else the claim split this replica: placed whole next pass
            _place_whole_instances(run, jobs, current)
    else:
        attempt, choice = Attempt(), current.volume_choice(run)
        if not (_place_on_existing(jobs[0], attempt, current, choice)
                or _place_on_new_instance(jobs[0], attempt, current, choice)):
            _cannot_place(run, jobs[:1], attempt, choice)


def _candidate_instances(run: Run):
    """Instances the run may use (any order; ``Pass.instances_for`` orders them)."""
    spec = run.spec
    instances = Instance.objects.filter(project_id=run.project_id, status__in=INSTANCE_ASSIGNABLE_STATES,
                                        fleet__status__in=(FleetStatus.SUBMITTED, FleetStatus.ACTIVE))
    if spec.get("fleets"):
        instances = instances.filter(fleet__name__in=spec["fleets"])
    for key, column in (("regions", "region"), ("availability_zones", "availability_zone"),
                        ("instance_types", "instance_type")):
        if spec.get(key):
            instances = instances.filter(**{f"{column}__in": spec[key]})
    if spec.get("backends"):
        instances = instances.filter(named(spec["backends"], prefix="backend__"))
    if spec.get("spot_policy") in ("spot", "on-demand"):
        instances = instances.filter(spot=spec["spot_policy"] == "spot")
    if spec.get("max_price") is not None:
        instances = instances.filter(price__lte=spec["max_price"])
    # Instances of a draining backend stay candidates only to say why they were passed over.
    return instances.annotate(backend_name=F("backend__name"), backend_status=F("backend__status")).only(
        "pk", "project_id", "fleet_id", "name", "resources", "total_blocks", "busy_blocks", "price", "status",
        "backend_id", "region", "availability_zone")


def _draining(instance: Instance) -> str | None:
    """Why nothing new goes to ``instance`` (its backend is draining), or None."""
    if instance.backend_status == BackendStatus.DRAINING:
        return f"backend {instance.backend_name} is draining"
    return None


def _place_on_existing(job: Job, attempt: Attempt, current: Pass, choice: VolumeChoice | None) -> bool:
    requirements = job.run.spec["resources"]
    for instance in current.instances_for(job.run):
        blocks, why = blocks_needed(instance.resources, instance.total_blocks, requirements)
        volumes = None if choice is None else choice.pick(instance.backend_id, instance.region,
                                                          instance.availability_zone)
        if draining := _draining(instance):
            attempt.add(instance.name, draining)
        elif blocks is None:
            attempt.add(instance.name, why)
        elif blocks > instance.idle_blocks:
            attempt.add(instance.name, f"needs {blocks} block(s), {instance.idle_blocks}/{instance.total_blocks} idle")
        elif choice is not None and volumes is None:
            attempt.add(instance.name, f"no usable volume for every mount point in {instance.availability_zone}")
        else:
            current.assign(job, instance, blocks, volumes)
            return True
    if not attempt.reasons:
        attempt.add("instances", "none in the fleets this run may use")
    return False


def _growable_fleets(run: Run):
    fleets = Fleet.objects.filter(project_id=run.project_id, status__in=(FleetStatus.SUBMITTED, FleetStatus.ACTIVE))
    if run.spec.get("fleets"):
        fleets = fleets.filter(name__in=run.spec["fleets"])
    return fleets.order_by("name")


def _place_on_new_instance(job: Job, attempt: Attempt, current: Pass, choice: VolumeChoice | None) -> bool:
    """Grow an elastic fleet by one instance sized for the job (where its volumes are), and assign
    the job to it."""
    if choice is not None and not choice.anywhere():
        return False  # no place holds a volume for every mount point: no instance could help
    for fleet in _growable_fleets(job.run):
        instance, why, retry = grow_fleet(fleet=fleet, run_spec=job.run.spec,
                                          where=choice.fits if choice else None)
        if instance is None:
            attempt.add(f"fleet {fleet.name}", why)
            attempt.retry = attempt.retry or retry
            continue
        if (idle_duration := job.run.spec.get("idle_duration")) is not None:
            # Grown for this run: it goes once idle for the run's idle_duration, not the fleet's.
            Instance.objects.filter(pk=instance.pk).update(idle_duration=idle_duration)
        current.forget()
        blocks, _ = blocks_needed(instance.resources, instance.total_blocks, job.run.spec["resources"])
        volumes = None if choice is None else choice.pick(instance.backend_id, instance.region,
                                                          instance.availability_zone)
        if blocks is not None and (choice is None or volumes is not None):
            current.assign(job, instance, blocks, volumes)
            return True
    return False


def _place_whole_instances(run: Run, jobs: list[Job], current: Pass) -> None:
    """All nodes of a multi-node replica take whole idle instances of one fleet, or none does."""
    attempt = Attempt()
    requirements = run.spec["resources"]
    by_fleet: dict[int, list[Instance]] = {}
    for instance in current.instances_for(run):
        why = _draining(instance) or mismatch(instance.resources, requirements)
        if why is None and instance.busy_blocks:
            why = f"{instance.busy_blocks}/{instance.total_blocks} blocks busy; multi-node jobs need whole instances"
        if why:
            attempt.add(instance.name, why)
        else:
            by_fleet.setdefault(instance.fleet_id, []).append(instance)
    for instances in by_fleet.values():
        if len(instances) >= len(jobs) and _assign_gang(jobs, instances, current):
            return
    if by_fleet:
        attempt.add("fleets", f"no fleet has {len(jobs)} idle instances that fit")
    _cannot_place(run, jobs, attempt)


def _assign_gang(jobs: list[Job], instances: list[Instance], current: Pass) -> bool:
    """All nodes at once or none: one transaction, instances in ascending order like every batch."""
    current.flush()
    chosen = sorted(instances[:len(jobs)], key=lambda instance: instance.pk)
    with transaction.atomic():
        pairs = zip(jobs, chosen, strict=True)
        assigned = assign_jobs([(job, instance, instance.total_blocks) for job, instance in pairs])
        if len(assigned) < len(jobs):
            transaction.set_rollback(True)
            return False
    current.placed += len(jobs)
    current.forget()
    return True


def _kick_followers() -> None:
    kick("runs.process_jobs")
    kick("fleets.process_instances")


def _cannot_place(run: Run, jobs: list[Job], attempt: Attempt, choice: VolumeChoice | None = None) -> None:
    """No capacity: wait ``pending`` if the run retries on no-capacity (within its duration), else fail.

    With volumes, the message names each mount point and each candidate with its location and why it
    is unusable; when no place holds a usable volume for every mount point, the run fails with
    ``volume_error`` rather than ``no_capacity``."""
    needs = _describe_requirements(run.spec)
    message = f"no capacity for {jobs[0].name} ({needs}): " + "; ".join(attempt.reasons[:10])
    reason = JobTerminationReason.NO_CAPACITY
    if choice is not None:
        if choice.anywhere():
            message = f"{message}. Volumes: {choice.explain()}"
        else:
            reason = JobTerminationReason.VOLUME_ERROR
            message = f"no place holds a usable volume for every mount point of {jobs[0].name}: {choice.explain()}"
    retry = run.spec.get("retry") or {}
    waited = (timezone.now() - retries.retry_clock_started(jobs[0])).total_seconds()
    if attempt.retry:  # a provider error is no answer: the job waits for the next pass, saying why
        Job.objects.filter(pk__in=[j.pk for j in jobs]).update(status_message=f"retrying: {message}")
        Run.objects.filter(pk=run.pk, status=RunStatus.SUBMITTED).update(status_message=f"retrying: {message}")
        return
    if "no-capacity" in retry.get("on_events", []) and waited < retry.get("duration", 0):
        Run.objects.filter(pk=run.pk, status__in=(RunStatus.SUBMITTED, RunStatus.PENDING)).update(
            status=RunStatus.PENDING, status_message=message, updated_at=timezone.now())
        Job.objects.filter(pk__in=[j.pk for j in jobs]).update(status_message=message)
        return
    if retry and "no-capacity" in retry.get("on_events", []):
        message = f"retry duration exceeded; {message}"
    for job in jobs:
        finish_job(job=job, to=JobStatus.FAILED, reason=reason, message=message)


def _describe_requirements(spec: dict) -> str:
    gpu = spec["resources"].get("gpu") or {}
    count = gpu.get("count") or {}
    parts = []
    if count.get("min"):
        parts.append(f"gpu {','.join(gpu.get('name') or ['any'])} x{count['min']}")
    parts.append(f"cpu {spec['resources'].get('cpu', {}).get('min')}..")
    parts.append(f"memory {spec['resources'].get('memory', {}).get('min')}GB..")
    if spec.get("fleets"):
        parts.append(f"fleets {', '.join(spec['fleets'])}")
    return ", ".join(parts)

