"""Writes for runs and jobs: submit, stop/abort, delete, and the run's state transitions."""

import secrets
from dataclasses import dataclass, field

from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from core.applying import ApplyResult, spec_changes
from core.errors import Conflict, InvalidInput
from core.kicks import kick
from core.resource_specs import parse_resources
from core.unique import insert_once
from fleets.models import Fleet
from fleets.provisioning import choose_offers
from fleets.services import check_backend_references
from projects.models import Project
from runs.groups import changed_groups, desired_by_group, scaled_down_message, scaling_note
from runs.jobs import record_run_event, request_jobs_stop, start_run_termination
from runs.models import (
    RUN_FINISHED_STATES,
    Job,
    JobStatus,
    JobTerminationReason,
    Run,
    RunStatus,
    RunTerminationReason,
    RunType,
)
from runs.schedules import end_schedule, next_trigger, waiting_message
from runs.submissions import job_name, run_jobs
from volumes.models import AttachmentStatus, Volume, VolumeAttachment, VolumeStatus
from volumes.services import request_detach


def _check_references(project: Project, spec: dict) -> None:
    """Names in a run configuration must exist now, so mistakes surface at submit, not at placement."""
    check_backend_references(project, spec.get("backends"))
    fleets = spec.get("fleets") or []
    missing = sorted(set(fleets) - set(Fleet.objects.filter(project=project, name__in=fleets)
                                       .values_list("name", flat=True)))
    if missing:
        raise InvalidInput(f"fleets: no fleet named {', '.join(map(repr, missing))} in project '{project.name}'",
                           field="fleets")
    for i, mount in enumerate(spec.get("volumes") or []):
        if "name" not in mount:
            continue  # an instance volume: a directory of whatever instance the job lands on
        names = mount["name"]
        found = set(Volume.objects.filter(project=project, name__in=names).exclude(status=VolumeStatus.DELETED)
                    .values_list("name", flat=True))
        missing = [n for n in names if n not in found]
        if missing:
            raise InvalidInput(f"volumes[{i}].name: no volume named {', '.join(map(repr, missing))} in project "
                               f"'{project.name}'", field=f"volumes[{i}].name")


def submit_run(*, project: Project, spec: dict, user=None, dry_run: bool = False) -> ApplyResult:
    """Submit a task or service: one job per node per replica, all ``submitted``.

    A finished run with the same name is replaced (as ``dstack apply`` does). An active service that
    is not terminating is updated in place (``_update_service``); any other active run is a 409. A run
    with a ``schedule`` is created ``pending``, with no jobs, until its first time (``runs.schedules``).
    """
    spec = dict(spec)
    spec["name"] = spec.get("name") or f"{spec['type']}-{secrets.token_hex(3)}"
    _check_references(project, spec)
    actor = getattr(user, "username", "") or ""
    with transaction.atomic():
        existing = Run.objects.select_for_update().filter(project=project, name=spec["name"]).first()
        if existing is not None and existing.status not in RUN_FINISHED_STATES:
            if _updatable(existing, spec):
                return _update_service(run=existing, spec=spec, actor=actor, dry_run=dry_run)
            raise Conflict(f"run '{existing.name}' is {existing.status}; stop it before submitting it again",
                           code="run_active")
        at = next_trigger(spec, timezone.now())  # a scheduled run waits, pending, for its first time
        result = ApplyResult(type=spec["type"], name=spec["name"], action="replace" if existing else "create",
                             spec=spec, plan={"next_triggered_at": at.isoformat()} if at else None)
        if not dry_run:
            result.resource = _create_run(project=project, spec=spec, user=user, replaces=existing, at=at,
                                          actor=actor)
            return result
    # A dry run of a new run asks the providers for offers: after the transaction, never holding the row lock.
    result.plan = {**(result.plan or {}), **offers_plan(project, spec)}
    return result


def _create_run(*, project: Project, spec: dict, user, replaces: Run | None, at, actor: str) -> Run:
    """The run row (replacing a finished one of the same name), its first jobs unless it waits for its
    schedule, and its events; inside ``submit_run``'s transaction."""
    if replaces is not None:
        replaces.delete()
    with insert_once(Run.objects.filter(project=project, name=spec["name"]), f"run '{spec['name']}'"):
        run = Run.objects.create(project=project, name=spec["name"], type=spec["type"], spec=spec, user=user,
                                 status_message=waiting_message(at) if at else "waiting for placement",
                                 status=RunStatus.PENDING if at else RunStatus.SUBMITTED, next_triggered_at=at)
    if at is None:
        create_run_jobs(run)
    record_run_event(run, "submitted", f"next run at {at.isoformat()}" if at else "", actor=actor)
    if note := scaling_note(spec):  # a range of replicas runs its minimum: said once, where users look
        record_run_event(run, "scaling", note, actor=actor)
    return run

PLAN_OFFERS = 5


def offers_plan(project: Project, spec: dict) -> dict:
    """What ``dstack apply`` shows before a new run: the cheapest offers of the project's backends that fit
    its resources and filters (``offers``, at most PLAN_OFFERS; ``offers_total``), and why none do
    (``no_offers``). Only a dry run asks: the providers are not called on every submission."""
    # Any instance a backend offers, as an elastic fleet would take it; the run's own needs and filters
    # are then applied as placement applies them (the job must fit the instance, not equal it).
    anything = {"resources": parse_resources({"cpu": "1..", "memory": "0GB.."}), "blocks": "auto",
                "backends": spec.get("backends"), "spot_policy": "auto"}
    offers, reasons, _ = choose_offers(project_id=project.pk, fleet_spec=anything, run_spec=spec)
    plan = {"offers": [{"backend": backend.name, "instance_type": offer.instance_type, "region": offer.region,
                        "availability_zone": offer.availability_zone, "resources": offer.resources,
                        "spot": offer.spot, "price": offer.price} for backend, offer, _ in offers[:PLAN_OFFERS]],
            "offers_total": len(offers)}
    if not offers:
        plan["no_offers"] = reasons
    return plan


def create_run_jobs(run: Run, *, submission_num: int = 0) -> None:
    """The jobs of one submission of a run, all ``submitted``, and placement kicked. ``submit_run``
    makes the first; each trigger of a schedule the next (``runs.schedules``, many runs at once)."""
    Job.objects.bulk_create(run_jobs(run, submission_num=submission_num))
    kick("runs.place_jobs")


# Fields that running jobs read from the run as they go (retry, timeouts), or that only count
# replicas: re-applying a change of them updates the service in place. Any other change alters what
# a job runs: a new spec version, rolled out one replica at a time (``runs.rollout``).
IN_PLACE_FIELDS = frozenset({"type", "name", "replicas", "replicas_max", "scaling", "retry", "stop_duration",
                             "max_duration"})
LIVE_JOB_STATES = (JobStatus.SUBMITTED, JobStatus.PROVISIONING, JobStatus.RUNNING)


@dataclass(frozen=True)
class Replica:
    """One replica of a service as its latest jobs (one per node) show it."""

    num: int
    jobs: tuple[Job, ...]

    @property
    def live(self) -> bool:
        """Neither ending nor ended: every latest job is submitted, provisioning or running."""
        return all(job.status in LIVE_JOB_STATES for job in self.jobs)

    @property
    def ready(self) -> bool:
        return all(job.status == JobStatus.RUNNING and job.ready for job in self.jobs)

    @property
    def version(self) -> int:
        return min(job.spec_version for job in self.jobs)

    @property
    def group(self) -> str:
        """The replica group it belongs to ('' in a service without groups)."""
        return self.jobs[0].group


def service_replicas(run: Run) -> list[Replica]:
    """The replicas a service counts, by number: each one whose latest jobs were not stopped as no longer
    wanted (``scaled_down``). A failed replica waiting for its retry counts: it comes back."""
    latest: dict[tuple[int, int], Job] = {}
    for job in run.jobs.order_by("replica_num", "job_num", "submission_num"):
        latest[(job.replica_num, job.job_num)] = job
    by_num: dict[int, list[Job]] = {}
    for (num, _), job in latest.items():
        by_num.setdefault(num, []).append(job)
    return [Replica(num, tuple(jobs)) for num, jobs in sorted(by_num.items())
            if not any(job.termination_reason == JobTerminationReason.SCALED_DOWN for job in jobs)]


def next_replica_num(run: Run) -> int:
    """A number no replica of the run ever had: a replica's jobs and events stay its own."""
    last = run.jobs.aggregate(last=Max("replica_num"))["last"]
    return 0 if last is None else last + 1


def start_replicas(*, run: Run, nums: list[int], group: str = "") -> None:
    """Submit new replicas ``nums`` of a service in replica group ``group`` (the caller holds the run's
    row lock), at its current spec version; placement takes them from there."""
    Job.objects.bulk_create(
        Job(project_id=run.project_id, run=run, name=job_name(run.name, node, num), replica_num=num, job_num=node,
            spec_version=run.spec_version, group=group)
        for num in nums for node in range(int(run.spec.get("nodes") or 1))
    )
    kick("runs.place_jobs")


def stop_replicas(*, replicas: list[Replica], message: str, actor: str = "") -> None:
    """Stop replicas no longer wanted, through the one stop path: their jobs end ``scaled_down``, which
    never counts as a failure of the run nor against its health."""
    moved = request_jobs_stop(job_ids=[job.pk for replica in replicas for job in replica.jobs],
                              reason=JobTerminationReason.SCALED_DOWN, actor=actor)
    Job.objects.filter(pk__in=moved).update(status_message=message)
    kick("runs.process_jobs")


def _updatable(run: Run, spec: dict) -> bool:
    """Scheduled runs are never updated in place: re-applying one is a 409 until it is stopped."""
    return (run.type == RunType.SERVICE and spec["type"] == RunType.SERVICE and run.status != RunStatus.TERMINATING
            and not run.spec.get("schedule") and not spec.get("schedule"))


@dataclass
class _ServiceUpdate:
    """What re-applying a service changes: fields, spec version, replicas started, stopped, replaced."""

    replicas: list[Replica]
    rolled: list[str]  # changed fields that alter what a job runs
    version: int
    start: list[tuple[int, str]]  # (replica number, group)
    stop: list[Replica]
    replace: list[int]
    keep: list[Replica] = field(default_factory=list)  # groups left as they were: current as they run

    def plan(self) -> dict:
        return {"start": [num for num, _ in self.start], "stop": [r.num for r in self.stop], "replace": self.replace}


def _plan_update(run: Run, spec: dict, changes: dict) -> _ServiceUpdate:
    """Start or stop only the difference in replicas, group by group (the highest live numbers stop first;
    a group no longer in the spec stops whole). With a changed job spec, every live replica left is
    replaced (so is any of an update still under way) - but when only some replica groups changed what
    they run, only theirs are: the replicas of the other groups are kept, as the new version."""
    replicas, desired = service_replicas(run), desired_by_group(spec)
    rolled = set(changes) - IN_PLACE_FIELDS
    if "groups" in rolled and not changed_groups(run.spec, spec):
        rolled.discard("groups")  # only counts changed, or groups came or went
    version = run.spec_version + (1 if rolled else 0)
    start, stop, first = [], [], next_replica_num(run)
    for group, wanted in desired.items():
        mine = [r for r in replicas if r.group == group]
        count = max(0, wanted - len(mine))
        start += [(num, group) for num in range(first, first + count)]
        first += count
        stop += sorted((r for r in mine if r.live), key=lambda r: -r.num)[:max(0, len(mine) - wanted)]
    stop += sorted((r for r in replicas if r.live and r.group not in desired), key=lambda r: -r.num)
    rolling = changed_groups(run.spec, spec) if rolled == {"groups"} else None
    keep = [r for r in replicas if rolling is not None and r.live and r not in stop and r.group not in rolling
            and r.version == run.spec_version]
    replace = [r.num for r in replicas if r.live and r not in stop and r not in keep and r.version < version]
    return _ServiceUpdate(replicas, sorted(rolled), version, start, stop, replace, keep)


def _update_service(*, run: Run, spec: dict, actor: str, dry_run: bool) -> ApplyResult:
    """Update an active service in place; the caller holds its row lock, so two re-applies, or a
    re-apply and a rollout step, never interleave.

    A changed ``replicas`` starts or stops only the difference. A changed job spec is stored as the
    next ``spec_version``: ``runs.rollout`` replaces the replicas one at a time. Fields jobs read as
    they go (retry, stop and max durations) just apply. A dry run says all that and writes nothing.
    """
    changes = spec_changes(run.spec, spec)
    update = _plan_update(run, spec, changes) if changes else _ServiceUpdate([], [], run.spec_version, [], [], [])
    result = ApplyResult(type=spec["type"], name=spec["name"], action="update" if changes else "unchanged",
                         spec=spec, changes=changes, plan=update.plan(), resource=run)
    if dry_run or not changes:
        return result
    outdated = any(r.live and r.version < run.spec_version for r in update.replicas)
    run.spec, run.spec_version = spec, update.version
    run.save(update_fields=["spec", "spec_version", "updated_at"])
    if update.keep:
        Job.objects.filter(pk__in=[job.pk for r in update.keep for job in r.jobs]).update(spec_version=update.version)
    for group in dict.fromkeys(group for _, group in update.start):
        start_replicas(run=run, nums=[num for num, g in update.start if g == group], group=group)
    for group in dict.fromkeys(r.group for r in update.stop):
        stop_replicas(replicas=[r for r in update.stop if r.group == group],
                      message=scaled_down_message(run.spec, group), actor=actor)
    if update.replace:
        kick("runs.roll_out")
    _record_update(run, update, changes, outdated=outdated, actor=actor)
    return result


def _record_update(run: Run, update: _ServiceUpdate, changes: dict, *, outdated: bool, actor: str) -> None:
    """The events of an update: started (a new spec version), scaled, or just the fields changed; and
    done when no replica of an older version is left (e.g. the last ones were scaled away)."""
    if update.rolled:
        record_run_event(run, "update_started", f"version {update.version}: {', '.join(update.rolled)} changed; "
                                                f"replacing replicas {update.replace} one at a time", actor)
    if update.start or update.stop:
        record_run_event(run, "scaled", f"from {len(update.replicas)} to {run.desired_replicas} replicas"
                                        + _group_counts(update, run.spec), actor)
    elif not update.rolled:
        record_run_event(run, "spec_updated", "changed " + ", ".join(changes), actor)
    if (outdated or update.rolled) and not update.replace:
        record_run_event(run, "update_done", f"every replica runs version {run.spec_version}", actor)


def _group_counts(update: _ServiceUpdate, spec: dict) -> str:
    """' (a: 2 -> 3, b: 1 -> 0)': the groups whose count changed, for the ``scaled`` event."""
    if not spec.get("groups"):
        return ""
    before = {group: sum(r.group == group for r in update.replicas) for group in dict.fromkeys(
        [*desired_by_group(spec), *(r.group for r in update.replicas)])}
    after = desired_by_group(spec)
    moved = [f"{group or 'no group'}: {count} -> {after.get(group, 0)}" for group, count in before.items()
             if count != after.get(group, 0)]
    return f" ({', '.join(moved)})" if moved else ""


def stop_run(*, run: Run, abort: bool = False, actor: str = "") -> Run:
    """Stop (or abort) a run: it goes ``terminating`` and ends once every job is finished.

    ``run`` is read by the caller (its status decides the 409); every move is a compare-and-swap, so
    a stale copy changes nothing it should not. The run is returned as changed here.

    Jobs that never got an instance finish at once; jobs on instances are stopped by the job
    reconciler, which releases their blocks only once their workload is stopped. Aborting a run
    that is already terminating is allowed: it escalates the stop.
    """
    reason = RunTerminationReason.ABORTED_BY_USER if abort else RunTerminationReason.STOPPED_BY_USER
    if run.status in RUN_FINISHED_STATES:
        raise Conflict(f"run '{run.name}' is already {run.status}", code="run_finished")
    if run.status == RunStatus.TERMINATING:
        if abort:
            _escalate_to_abort(run, actor)
    else:
        start_run_termination(run=run, reason=reason, actor=actor)
    end_schedule(run)  # a scheduled run stopped by its user waits for no next time
    _kick_jobs()
    return run


def _escalate_to_abort(run: Run, actor: str) -> None:
    with transaction.atomic():
        updated = Run.objects.filter(pk=run.pk, status=RunStatus.TERMINATING).exclude(
            termination_reason=RunTerminationReason.ABORTED_BY_USER
        ).update(termination_reason=RunTerminationReason.ABORTED_BY_USER, status_message="aborting")
        if updated:
            # A job that ended on its own (done, failed) keeps its reason; a stopping one is now aborted.
            run.jobs.filter(status=JobStatus.TERMINATING, termination_reason__in=(
                JobTerminationReason.STOPPED_BY_USER, JobTerminationReason.STOPPED_BY_SERVER)).update(
                termination_reason=JobTerminationReason.ABORTED_BY_USER, lease_until=None, lease_owner="",
                last_processed_at=None)
            record_run_event(run, "abort_requested", actor=actor)
        # Detaches under way are forced at once (again safe on a second abort); the others are asked
        # forced by the stop loop as soon as their workload is stopped.
        request_detach(VolumeAttachment.objects.filter(job__run_id=run.pk, status=AttachmentStatus.DETACHING),
                       force=True, actor=actor, why="the run was aborted")


def _kick_jobs() -> None:
    kick("runs.process_jobs")


@transaction.atomic
def delete_run(*, run: Run, actor: str = "") -> None:
    """Forget a finished run (409 ``run_active`` while it is not finished)."""
    run = Run.objects.select_for_update().get(pk=run.pk)
    if run.status not in RUN_FINISHED_STATES:
        raise Conflict(f"run '{run.name}' is {run.status}; stop it first", code="run_active")
    record_run_event(run, "deleted", actor=actor)
    run.delete()

