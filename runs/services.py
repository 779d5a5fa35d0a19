"""Writes for runs and jobs: submit, stop/abort, delete, and the run's state transitions."""

import secrets

from django.db import transaction
from django.utils import timezone

from fleets.models import Fleet
from fleets.services import check_backend_references
from projects.errors import Conflict, InvalidInput
from projects.models import Project
from projects.services import ApplyResult, compare_and_swap, record_event
from runs.models import (
    JOB_ACTIVE_STATES,
    RUN_ACTIVE_STATES,
    RUN_FINISHED_STATES,
    Job,
    JobStatus,
    JobTerminationReason,
    Run,
    RunStatus,
    RunTerminationReason,
)
from volumes.models import Volume, VolumeStatus


def _event(run: Run, kind: str, message: str = "", actor: str = "") -> None:
    record_event(project=run.project_id, resource_type="run", resource_name=run.name, kind=kind, message=message,
                 actor=actor)


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
        run = Run.objects.create(project=project, name=spec["name"], type=spec["type"], spec=spec, user=user,
                                 status_message="waiting for placement")
        Job.objects.bulk_create(
            Job(project=project, run=run, name=job_name(run.name, node, replica), replica_num=replica, job_num=node)
            for replica in range(int(spec.get("replicas") or 1))
            for node in range(int(spec.get("nodes") or 1))
        )
        _event(run, "submitted", actor=actor)
        result.resource = run
        return result


def stop_run(*, run: Run, abort: bool = False, actor: str = "") -> Run:
    """Stop (or abort) a run: it goes ``terminating`` and ends once every job is finished.

    Jobs that never got an instance finish at once; jobs on instances are stopped by the job
    reconciler, which releases their blocks only after their volumes are confirmed detached.
    Aborting an already terminating run is allowed (it escalates to a forced stop).
    """
    reason = RunTerminationReason.ABORTED_BY_USER if abort else RunTerminationReason.STOPPED_BY_USER
    with transaction.atomic():
        run = Run.objects.select_for_update().get(pk=run.pk)
        if run.status in RUN_FINISHED_STATES:
            raise Conflict(f"run '{run.name}' is already {run.status}", code="run_finished")
        if run.status == RunStatus.TERMINATING and not abort:
            return run
        now = timezone.now()
        compare_and_swap(Run, pk=run.pk, allowed_from=RUN_ACTIVE_STATES, to=RunStatus.TERMINATING,
                         termination_reason=reason, terminating_since=run.terminating_since or now,
                         status_message="aborting" if abort else "stopping")
        _event(run, "terminating", reason, actor)
        _stop_jobs(run, abort=abort, actor=actor)
    finish_run_if_jobs_finished(run_id=run.pk)
    run.refresh_from_db()
    return run


def _stop_jobs(run: Run, *, abort: bool, actor: str) -> None:
    reason = JobTerminationReason.ABORTED_BY_USER if abort else JobTerminationReason.STOPPED_BY_USER
    final = JobStatus.ABORTED if abort else JobStatus.TERMINATED
    for job in run.jobs.filter(status__in=JOB_ACTIVE_STATES).order_by("pk"):
        if job.instance_id is None:
            moved = compare_and_swap(Job, pk=job.pk, allowed_from=JOB_ACTIVE_STATES, to=final,
                                     termination_reason=reason, finished_at=timezone.now())
        else:
            moved = compare_and_swap(Job, pk=job.pk, allowed_from=JOB_ACTIVE_STATES, to=JobStatus.TERMINATING,
                                     termination_reason=reason)
        if moved:
            record_event(project=run.project_id, resource_type="job", resource_name=job.name,
                         kind=final if job.instance_id is None else "terminating", message=reason, actor=actor)


def finish_run_if_jobs_finished(*, run_id: int) -> bool:
    """A terminating run ends when all its jobs are finished: ``terminated`` if stopped, else ``failed``."""
    with transaction.atomic():
        run = Run.objects.select_for_update().get(pk=run_id)
        if run.status != RunStatus.TERMINATING:
            return False
        if run.jobs.filter(status__in=JOB_ACTIVE_STATES).exists():
            return False
        user_stop = run.termination_reason in (RunTerminationReason.STOPPED_BY_USER,
                                               RunTerminationReason.ABORTED_BY_USER)
        final = RunStatus.TERMINATED if user_stop else RunStatus.FAILED
        compare_and_swap(Run, pk=run.pk, allowed_from=(RunStatus.TERMINATING,), to=final,
                         finished_at=timezone.now(), status_message="")
        _event(run, final, run.termination_reason)
        return True


@transaction.atomic
def delete_run(*, run: Run, actor: str = "") -> None:
    """Forget a finished run (409 ``run_active`` while it is not finished)."""
    run = Run.objects.select_for_update().get(pk=run.pk)
    if run.status not in RUN_FINISHED_STATES:
        raise Conflict(f"run '{run.name}' is {run.status}; stop it first", code="run_active")
    _event(run, "deleted", actor=actor)
    run.delete()

