"""Writes for runs and jobs: submit, stop/abort, delete, and the run's state transitions."""

import secrets

from django.db import transaction

from core.errors import Conflict, InvalidInput
from core.kicks import kick
from core.specs import ApplyResult
from core.unique import insert_once
from fleets.models import Fleet
from fleets.services import check_backend_references
from projects.models import Project
from runs.jobs import record_run_event, start_run_termination
from runs.models import (
    RUN_FINISHED_STATES,
    Job,
    JobStatus,
    JobTerminationReason,
    Run,
    RunStatus,
    RunTerminationReason,
)
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


def job_name(run_name: str, job_num: int, replica_num: int) -> str:
    return f"{run_name}-{job_num}-{replica_num}"


def submit_run(*, project: Project, spec: dict, user=None, dry_run: bool = False) -> ApplyResult:
    """Submit a task or service: one job per node per replica, all ``submitted``.

    A finished run with the same name is replaced (as ``dstack apply`` does); an active one is a 409.
    """
    spec = dict(spec)
    spec["name"] = spec.get("name") or f"{spec['type']}-{secrets.token_hex(3)}"
    _check_references(project, spec)
    actor = getattr(user, "username", "") or ""
    with transaction.atomic():
        existing = Run.objects.select_for_update().filter(project=project, name=spec["name"]).first()
        if existing is not None and existing.status not in RUN_FINISHED_STATES:
            raise Conflict(f"run '{existing.name}' is {existing.status}; stop it before submitting it again",
                           code="run_active")
        result = ApplyResult(type=spec["type"], name=spec["name"], action="replace" if existing else "create",
                             spec=spec)
        if dry_run:
            return result
        if existing is not None:
            existing.delete()
        with insert_once(Run.objects.filter(project=project, name=spec["name"]), f"run '{spec['name']}'"):
            run = Run.objects.create(project=project, name=spec["name"], type=spec["type"], spec=spec, user=user,
                                     status_message="waiting for placement")
        Job.objects.bulk_create(
            Job(project=project, run=run, name=job_name(run.name, node, replica), replica_num=replica, job_num=node)
            for replica in range(int(spec.get("replicas") or 1))
            for node in range(int(spec.get("nodes") or 1))
        )
        record_run_event(run, "submitted", actor=actor)
        kick("runs.place_jobs")
        result.resource = run
        return result


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

