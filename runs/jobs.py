"""Job state transitions and the run status they imply: the one place jobs and runs change state.

Lock order everywhere: instance, then job, then run. A job's blocks are taken and given back in
the same transaction as its own transition (``fleets.blocks``).
"""

from django.db import transaction
from django.utils import timezone

from core.events import record_event
from core.kicks import kick
from core.models import Event
from core.transitions import compare_and_swap
from fleets.blocks import give_back_blocks, take_blocks
from fleets.models import Instance
from runs.models import (
    JOB_ACTIVE_STATES,
    RUN_FINISHED_STATES,
    Job,
    JobStatus,
    JobTerminationReason,
    Run,
    RunStatus,
    RunTerminationReason,
)


def _job_event(job: Job, kind: str, message: str = "", actor: str = "") -> None:
    record_event(project=job.project_id, resource_type="job", resource_name=job.name, kind=kind, message=message,
                 actor=actor)


def assign_job_to_instance(*, job: Job, instance: Instance, blocks: int) -> bool:
    """Give a submitted job ``blocks`` of ``instance``; False (nothing changed) if either moved first."""
    return job.pk in assign_jobs([(job, instance, blocks)])


def assign_jobs(assignments: list[tuple[Job, Instance, int]]) -> set[int]:
    """Assign many submitted jobs in one transaction; returns the ids of the jobs assigned.

    Each assignment takes its blocks with the guarded relative update (the instance row lock) and
    moves its job in the same transaction; one that loses a race changes nothing and its job stays
    ``submitted``. Callers pass the assignments in ascending instance order: every worker then locks
    instances in the same order, so concurrent batches cannot deadlock.
    """
    assigned: set[int] = set()
    events: list[Event] = []
    now = timezone.now()
    with transaction.atomic():
        for job, instance, blocks in assignments:
            if not take_blocks(instance_id=instance.pk, blocks=blocks):
                continue
            if Job.objects.filter(pk=job.pk, status=JobStatus.SUBMITTED, instance__isnull=True).update(
                    status=JobStatus.PROVISIONING, instance=instance, blocks=blocks, updated_at=now,
                    status_message=f"placed on {instance.name}"):
                assigned.add(job.pk)
                events.append(Event(project_id=job.project_id, resource_type="job", resource_name=job.name,
                                    kind=JobStatus.PROVISIONING,
                                    message=f"{blocks}/{instance.total_blocks} block(s) of {instance.name}"))
            else:  # stopped meanwhile: the blocks go back in the same transaction
                give_back_blocks(instance_id=instance.pk, blocks=blocks)
        Event.objects.bulk_create(events)
    return assigned


def return_job_to_queue(*, job: Job, message: str) -> bool:
    """Undo an assignment whose instance never came up: blocks back, job ``submitted`` again."""
    with transaction.atomic():
        Instance.objects.select_for_update().filter(pk=job.instance_id).first()
        if not compare_and_swap(Job, pk=job.pk, allowed_from=(JobStatus.PROVISIONING,), to=JobStatus.SUBMITTED,
                                instance=None, blocks=0, status_message=message, workload_id=""):
            return False
        give_back_blocks(instance_id=job.instance_id, blocks=job.blocks)
        _job_event(job, "requeued", message)
        kick("runs.place_jobs")
    return True


def mark_jobs_running(started: list[tuple[Job, str]]) -> set[int]:
    """Record started workloads: each job still ``provisioning`` becomes ``running``, in one
    transaction with its event. Returns the ids of the jobs that moved (a job stopped in the
    meantime keeps its status; the caller still records its workload so the stop reaches it)."""
    moved: set[int] = set()
    now = timezone.now()
    with transaction.atomic():
        for job, workload_id in started:
            if Job.objects.filter(pk=job.pk, status=JobStatus.PROVISIONING).update(
                    status=JobStatus.RUNNING, workload_id=workload_id, started_at=now, status_message="",
                    updated_at=now):
                moved.add(job.pk)
        Event.objects.bulk_create(
            Event(project_id=job.project_id, resource_type="job", resource_name=job.name, kind=JobStatus.RUNNING)
            for job, _ in started if job.pk in moved
        )
    return moved


def finish_job(*, job: Job, to: str, reason: str, exit_status: int | None = None, message: str = "",
               actor: str = "") -> bool:
    """Finish an unfinished job and release its blocks in the same transaction.

    The job row is re-read under the instance lock: a caller's copy may predate an assignment
    made by another worker, and releasing from a stale copy would leak the blocks.
    """
    for _ in range(3):
        finished = _try_finish(job.pk, to=to, reason=reason, exit_status=exit_status, message=message, actor=actor)
        if finished is not None:
            return finished
    return False


def _try_finish(pk: int, *, to: str, reason: str, exit_status, message: str, actor: str) -> bool | None:
    with transaction.atomic():
        job = Job.objects.filter(pk=pk, status__in=JOB_ACTIVE_STATES).first()
        if job is None:
            return False
        if job.instance_id is not None:
            Instance.objects.select_for_update().filter(pk=job.instance_id).first()
        # Guarded on the instance and blocks we are about to release: if an assignment landed in
        # between, nothing is written and the caller tries again with the fresh row.
        finished = Job.objects.filter(pk=pk, status__in=JOB_ACTIVE_STATES, instance_id=job.instance_id,
                                      blocks=job.blocks).update(
            status=to, termination_reason=reason, exit_status=exit_status, finished_at=timezone.now(),
            status_message=message, lease_until=None, updated_at=timezone.now())
        if not finished:
            return None
        if job.instance_id is not None:
            give_back_blocks(instance_id=job.instance_id, blocks=job.blocks)
        _job_event(job, to, message or reason, actor)
    return True


def request_job_stop(*, job: Job, reason: str, actor: str = "") -> bool:
    """Stop a job: one still waiting for placement finishes at once, any other goes ``terminating``
    (the workload reconciler stops its workload, then releases its blocks)."""
    final = JobStatus.ABORTED if reason == JobTerminationReason.ABORTED_BY_USER else JobStatus.TERMINATED
    now = timezone.now()
    with transaction.atomic():
        # Decided by the row, not by the caller's copy: placement may have assigned it meanwhile.
        if Job.objects.filter(pk=job.pk, status=JobStatus.SUBMITTED, instance__isnull=True).update(
                status=final, termination_reason=reason, finished_at=now, lease_until=None, updated_at=now):
            _job_event(job, final, reason, actor)
            return True
        # The lease is dropped (owner too, so the poll that held it cannot put it back) and the job
        # goes first in line: a poll lease or a long queue never delays a stop.
        moved = compare_and_swap(Job, pk=job.pk, allowed_from=JOB_ACTIVE_STATES, to=JobStatus.TERMINATING,
                                 termination_reason=reason, lease_until=None, lease_owner="", last_processed_at=None)
        if moved:
            _job_event(job, "terminating", reason, actor)
    return moved


def record_run_event(run: Run, kind: str, message: str = "", actor: str = "") -> None:
    record_event(project=run.project_id, resource_type="run", resource_name=run.name, kind=kind, message=message,
                 actor=actor)


def start_run_termination(*, run: Run, reason: str, message: str = "", actor: str = "") -> bool:
    """Move an active run to ``terminating`` with ``reason`` and ask every unfinished job to stop."""
    job_reason = {
        RunTerminationReason.STOPPED_BY_USER: JobTerminationReason.STOPPED_BY_USER,
        RunTerminationReason.ABORTED_BY_USER: JobTerminationReason.ABORTED_BY_USER,
    }.get(reason, JobTerminationReason.STOPPED_BY_SERVER)
    with transaction.atomic():
        moved = compare_and_swap(Run, pk=run.pk, allowed_from=[s for s in RunStatus if s not in RUN_FINISHED_STATES],
                                 to=RunStatus.TERMINATING, termination_reason=reason,
                                 terminating_since=run.terminating_since or timezone.now(),
                                 status_message=message or reason)
        if not moved:
            return False
        record_run_event(run, "terminating", message or reason, actor)
    for job in run.jobs.filter(status__in=JOB_ACTIVE_STATES).order_by("pk"):
        request_job_stop(job=job, reason=job_reason, actor=actor)
    return True


def refresh_run_status(*, run_id: int) -> str:
    """Derive a run's status from its latest jobs (the run's own transitions all happen here)."""
    refresh_run_statuses([run_id])
    return Run.objects.values_list("status", flat=True).get(pk=run_id)


def refresh_run_statuses(run_ids) -> None:
    """``refresh_run_status`` for many runs in a few queries: simple moves (to provisioning,
    running, done) are applied per group with one guarded update; failures and endings go one by one."""
    runs = {run.pk: run for run in Run.objects.filter(pk__in=set(run_ids)).exclude(status__in=RUN_FINISHED_STATES)}
    jobs_by_run: dict[int, dict[tuple[int, int], Job]] = {pk: {} for pk in runs}
    for job in Job.objects.filter(run_id__in=runs).order_by("run_id", "replica_num", "job_num", "submission_num"):
        jobs_by_run[job.run_id][(job.replica_num, job.job_num)] = job
    moves: dict[tuple[str, str], list[Run]] = {}
    for pk, run in runs.items():
        latest = list(jobs_by_run[pk].values())
        target = _target_status(run, latest)
        if target is None:
            continue
        if target in (RunStatus.PROVISIONING, RunStatus.RUNNING):
            moves.setdefault((run.status, target), []).append(run)
        else:
            _settle_run(run, latest)
    for (source, target), group in moves.items():
        _move_group(group, source, target)


def _target_status(run: Run, latest: list[Job]) -> str | None:
    """Where the run should be, given its latest jobs; None when it stays where it is."""
    if run.status == RunStatus.TERMINATING:
        return RunStatus.TERMINATED  # settled by _settle_run once every job is finished
    statuses = {job.status for job in latest}
    # The run is not terminating, so a job that ended without success failed on the server's side.
    if statuses & {JobStatus.FAILED, JobStatus.ABORTED, JobStatus.TERMINATED} or statuses == {JobStatus.DONE}:
        return RunStatus.DONE  # settled by _settle_run: done, or failing
    for status, target in ((JobStatus.RUNNING, RunStatus.RUNNING), (JobStatus.PROVISIONING, RunStatus.PROVISIONING)):
        if status in statuses:
            return None if run.status == target else target
    return None


def _move_group(group: list[Run], source: str, target: str) -> None:
    with transaction.atomic():
        moved = Run.objects.filter(pk__in=[r.pk for r in group], status=source).update(
            status=target, status_message="", updated_at=timezone.now())
        if moved != len(group):
            transaction.set_rollback(True)  # someone else moved some: go one by one instead
        else:
            Event.objects.bulk_create(Event(project_id=r.project_id, resource_type="run", resource_name=r.name,
                                            kind=target) for r in group)
            return
    for run in group:
        _move(Run.objects.get(pk=run.pk), target, status_message="")


def _settle_run(run: Run, latest: list[Job]) -> None:
    if run.status == RunStatus.TERMINATING:
        _finish_if_jobs_finished(run)
        return
    failed = next((job for job in latest if job.status in (JobStatus.FAILED, JobStatus.ABORTED, JobStatus.TERMINATED)),
                  None)
    if failed is None:
        _move(run, RunStatus.DONE, termination_reason=RunTerminationReason.ALL_JOBS_DONE, finished_at=timezone.now(),
              status_message="")
        return
    reason = {
        JobTerminationReason.NO_CAPACITY: RunTerminationReason.NO_CAPACITY,
        JobTerminationReason.VOLUME_ERROR: RunTerminationReason.VOLUME_ERROR,
    }.get(failed.termination_reason, RunTerminationReason.JOB_FAILED)
    start_run_termination(run=run, reason=reason,
                          message=f"job {failed.name} failed: {failed.status_message or failed.termination_reason}")
    _finish_if_jobs_finished(Run.objects.get(pk=run.pk))


def _move(run: Run, to: str, **changes) -> bool:
    if run.status == to:
        return False
    with transaction.atomic():
        moved = compare_and_swap(Run, pk=run.pk, allowed_from=(run.status,), to=to, **changes)
        if moved:
            record_run_event(run, to, changes.get("termination_reason", ""))
    return moved


FINAL_MESSAGE_BY_USER = {
    RunTerminationReason.STOPPED_BY_USER: "stopped by the user",
    RunTerminationReason.ABORTED_BY_USER: "aborted by the user",
}


def _finish_if_jobs_finished(run: Run) -> str:
    """A terminating run ends once all its jobs are finished: ``terminated`` if a user stopped it."""
    if run.jobs.filter(status__in=JOB_ACTIVE_STATES).exists():
        return run.status
    by_user = FINAL_MESSAGE_BY_USER.get(run.termination_reason)
    # The message says how the run ended ("aborting" or "stopping" would go stale); a failure keeps its cause.
    changes = {"status_message": by_user} if by_user else {}
    _move(run, RunStatus.TERMINATED if by_user else RunStatus.FAILED, finished_at=timezone.now(),
          termination_reason=run.termination_reason, **changes)
    return Run.objects.get(pk=run.pk).status
