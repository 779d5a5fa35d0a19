"""Job state transitions and the run status they imply: the one place jobs and runs change state.

Lock order everywhere: instance, then job, then run. A job's blocks are taken and given back in
the same transaction as its own transition (``fleets.blocks``).
"""

from dataclasses import dataclass
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from core.events import record_event
from core.kicks import kick
from core.metrics import jobs_placed, runs_ended
from core.models import Event
from core.transitions import compare_and_swap
from fleets.blocks import give_back_blocks, take_blocks
from fleets.models import Instance
from runs import retries
from runs.health import update_health
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
from runs.schedules import rearm_if_scheduled
from volumes.choice import job_mounts
from volumes.models import AttachmentStatus, Volume, VolumeAttachment
from volumes.services import request_detach, reserve_volumes, set_force_deadline


def _job_event(job: Job, kind: str, message: str = "", actor: str = "") -> None:
    record_event(project=job.project_id, resource_type="job", resource_name=job.name, kind=kind, message=message,
                 actor=actor)


def assign_job_to_instance(*, job: Job, instance: Instance, blocks: int) -> bool:
    """Give a submitted job ``blocks`` of ``instance``; False (nothing changed) if either moved first."""
    return job.pk in assign_jobs([(job, instance, blocks)])


def assign_jobs(assignments: list[tuple[Job, Instance, int]],
                volumes: dict[int, list[tuple[str, Volume]]] | None = None) -> set[int]:
    """Assign many submitted jobs in one transaction; returns the ids of the jobs assigned.

    Each assignment takes its blocks with the guarded relative update (the instance row lock) and
    moves its job in the same transaction; one that loses a race changes nothing and its job stays
    ``submitted``. Callers pass the assignments in ascending instance order: every worker then locks
    instances in the same order, so concurrent batches cannot deadlock.

    ``volumes``: the volumes chosen for a job's mount points (``{job.pk: [(path, volume), ...]}``);
    the job is assigned only if it gets every one of them (``volumes.services.reserve_volumes``).
    """
    volumes = volumes or {}
    assigned: set[int] = set()
    events: list[Event] = []
    now = timezone.now()
    with transaction.atomic():
        for job, instance, blocks in assignments:
            chosen = volumes.get(job.pk)
            try:
                # A savepoint only for jobs with volumes: losing a volume undoes the blocks and the move.
                with transaction.atomic(savepoint=bool(chosen)):
                    if not take_blocks(instance_id=instance.pk, blocks=blocks):
                        continue
                    spec = job.run.spec if "run" in job._state.fields_cache else {}
                    message = f"placed on {instance.name}" + (
                        f"; attaching {', '.join(v.name for _, v in chosen)}" if chosen else "")
                    if not Job.objects.filter(pk=job.pk, status=JobStatus.SUBMITTED, instance__isnull=True).update(
                            status=JobStatus.PROVISIONING, instance=instance, blocks=blocks, updated_at=now,
                            status_message=message, volumes=job_mounts(spec, chosen or [])):
                        give_back_blocks(instance_id=instance.pk, blocks=blocks)  # stopped meanwhile
                        continue
                    if chosen and not reserve_volumes(job_id=job.pk, instance_id=instance.pk, choices=chosen):
                        raise _VolumeTaken
            except _VolumeTaken:
                continue
            assigned.add(job.pk)
            events.append(Event(project_id=job.project_id, resource_type="job", resource_name=job.name,
                                kind=JobStatus.PROVISIONING, message=message))
        Event.objects.bulk_create(events)
        jobs_placed([job for job, _, _ in assignments if job.pk in assigned], now)
    return assigned


class _VolumeTaken(Exception):
    """A chosen volume went to another job first: the assignment is undone (its savepoint)."""


def return_job_to_queue(*, job: Job, message: str) -> bool:
    """Undo an assignment whose instance never came up: blocks back, job ``submitted`` again."""
    with transaction.atomic():
        Instance.objects.select_for_update().filter(pk=job.instance_id).first()
        if not compare_and_swap(Job, pk=job.pk, allowed_from=(JobStatus.PROVISIONING,), to=JobStatus.SUBMITTED,
                                instance=None, blocks=0, status_message=message, workload_id="", volumes=[]):
            return False
        give_back_blocks(instance_id=job.instance_id, blocks=job.blocks)
        # Its volumes are let go (at once: its instance never came up), so it can have them again.
        request_detach(VolumeAttachment.objects.filter(job_id=job.pk), force=False,
                       why="its job went back to the queue")
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
            # Without probes a running job is ready at once; with them, once they pass (``runs.health``).
            probes = "run" in job._state.fields_cache and job.run.spec.get("probes")
            if Job.objects.filter(pk=job.pk, status=JobStatus.PROVISIONING).update(
                    status=JobStatus.RUNNING, workload_id=workload_id, started_at=now, status_message="",
                    updated_at=now, ready=not probes):
                moved.add(job.pk)
        Event.objects.bulk_create(
            Event(project_id=job.project_id, resource_type="job", resource_name=job.name, kind=JobStatus.RUNNING)
            for job, _ in started if job.pk in moved
        )
    return moved


@dataclass(frozen=True)
class Finish:
    """How one job ends: its final status, reason, exit status and message."""

    job_id: int
    to: str
    reason: str
    exit_status: int | None = None
    message: str = ""
    actor: str = ""


def finish_job(*, job: Job, to: str, reason: str, exit_status: int | None = None, message: str = "",
               actor: str = "") -> bool:
    """Finish an unfinished job and release its blocks in the same transaction."""
    return job.pk in finish_jobs([Finish(job.pk, to, reason, exit_status, message, actor)])


# How a job ends once its workload is stopped and its volumes detached, by termination reason.
FINAL_STATUS_BY_REASON = {
    JobTerminationReason.ABORTED_BY_USER: JobStatus.ABORTED,
    JobTerminationReason.STOPPED_BY_USER: JobStatus.TERMINATED,
    JobTerminationReason.STOPPED_BY_SERVER: JobStatus.TERMINATED,
    JobTerminationReason.MAX_DURATION_EXCEEDED: JobStatus.TERMINATED,
    JobTerminationReason.SCALED_DOWN: JobStatus.TERMINATED,
    JobTerminationReason.INACTIVITY_DURATION_EXCEEDED: JobStatus.TERMINATED,
    JobTerminationReason.UTILIZATION_POLICY: JobStatus.TERMINATED,
    JobTerminationReason.DONE: JobStatus.DONE,
}
STOP_REASONS = (JobTerminationReason.ABORTED_BY_USER, JobTerminationReason.STOPPED_BY_USER,
                JobTerminationReason.STOPPED_BY_SERVER, JobTerminationReason.MAX_DURATION_EXCEEDED,
                JobTerminationReason.SCALED_DOWN, JobTerminationReason.INACTIVITY_DURATION_EXCEEDED,
                JobTerminationReason.UTILIZATION_POLICY)


def final_status(reason: str) -> str:
    return FINAL_STATUS_BY_REASON.get(reason, JobStatus.FAILED)


def stopped_finish(job: Job) -> Finish:
    """How a terminating job whose workload is stopped (and volumes detached) finishes."""
    message = "" if job.termination_reason in STOP_REASONS else job.status_message
    return Finish(job.pk, final_status(job.termination_reason), job.termination_reason, job.exit_status, message)


def finish_detached_jobs(job_ids) -> set[int]:
    """Terminating jobs among ``job_ids`` whose workload is stopped and whose volumes are all detached
    finish now, and their runs are derived again; returns the ids finished. Called as soon as a
    detach is confirmed (``volumes.signals``), so a stop does not wait for another pass of the job loop."""
    jobs = list(Job.objects.filter(pk__in=job_ids, status=JobStatus.TERMINATING, workload_stopped_at__isnull=False)
                .only("pk", "run_id", "termination_reason", "exit_status", "status_message"))
    holding = jobs_holding_volumes([job.pk for job in jobs])
    ready = [job for job in jobs if job.pk not in holding]
    finished = finish_jobs([stopped_finish(job) for job in ready])
    refresh_run_statuses({job.run_id for job in ready if job.pk in finished})
    return finished


def jobs_holding_volumes(job_ids) -> set[int]:
    """The jobs among ``job_ids`` with an attachment the provider has not confirmed detached."""
    return set(VolumeAttachment.objects.filter(job_id__in=job_ids).exclude(status=AttachmentStatus.DETACHED)
               .values_list("job_id", flat=True))


def end_job(*, job: Job, to: str, reason: str, exit_status: int | None = None, message: str = "") -> bool:
    """``end_jobs`` for one job."""
    return job.pk in end_jobs([Finish(job.pk, to, reason, exit_status, message)])


def end_jobs(finishes: list[Finish]) -> set[int]:
    """Jobs whose workload ended (or that will never run) finish as ``finishes`` say, except that a
    job still holding volumes detaches them first: it goes ``terminating`` with its reason, exit
    status and message, and the stop loop finishes it (``final_status``) once the provider confirms
    every detach. Returns the ids of the jobs that moved."""
    holding = jobs_holding_volumes([f.job_id for f in finishes])
    moved = finish_jobs([f for f in finishes if f.job_id not in holding])
    now = timezone.now()
    detaching = [f for f in finishes if f.job_id in holding]
    named = {pk: (name, project_id) for pk, name, project_id in Job.objects.filter(
        pk__in=[f.job_id for f in detaching]).values_list("pk", "name", "project_id")}
    with transaction.atomic():
        events = []
        for finish in detaching:
            if Job.objects.filter(pk=finish.job_id, status__in=(JobStatus.PROVISIONING, JobStatus.RUNNING)).update(
                    status=JobStatus.TERMINATING, termination_reason=finish.reason, exit_status=finish.exit_status,
                    status_message=finish.message, workload_stopped_at=now, lease_until=None, lease_owner="",
                    last_processed_at=None, updated_at=now):
                moved.add(finish.job_id)
                name, project_id = named[finish.job_id]
                events.append(Event(project_id=project_id, resource_type="job", resource_name=name, kind="terminating",
                                    message=f"{finish.message or finish.reason}; detaching its volumes"))
        Event.objects.bulk_create(events)
    return moved


def finish_jobs(finishes: list[Finish]) -> set[int]:
    """Finish many unfinished jobs and release their blocks, in one transaction; the ids finished.

    Jobs are re-read under their instances' locks (taken in ascending order, like every batch): a
    caller's copy may predate an assignment made by another worker, and releasing from a stale copy
    would leak blocks. A job that got an instance between the read and the lock is tried again.
    """
    pending, finished = {f.job_id: f for f in finishes}, set()
    for _ in range(3):
        if not pending:
            break
        done = _try_finish(pending)
        finished |= done
        unfinished = set(Job.objects.filter(pk__in=set(pending) - done, status__in=JOB_ACTIVE_STATES)
                         .values_list("pk", flat=True)) if len(done) < len(pending) else set()
        pending = {pk: f for pk, f in pending.items() if pk in unfinished}
    return finished


def _try_finish(finishes: dict[int, Finish]) -> set[int]:
    now = timezone.now()
    with transaction.atomic():
        instance_ids = sorted({i for i in Job.objects.filter(pk__in=finishes, status__in=JOB_ACTIVE_STATES,
                                                             instance__isnull=False)
                               .values_list("instance_id", flat=True)})
        list(Instance.objects.select_for_update().filter(pk__in=instance_ids).order_by("pk").values_list("pk"))
        jobs = list(Job.objects.filter(pk__in=finishes, status__in=JOB_ACTIVE_STATES)
                    .only("pk", "project_id", "name", "instance_id", "blocks"))
        done, released, events = set(), {}, []
        for job in jobs:
            if job.instance_id is not None and job.instance_id not in instance_ids:
                continue  # assigned after our read: its instance is not locked; next round
            finish = finishes[job.pk]
            # Under the instance lock, ``instance`` and ``blocks`` cannot change; a job without an
            # instance is guarded so that an assignment landing now wins.
            guard = {"instance_id": job.instance_id} if job.instance_id else {"instance__isnull": True}
            if not Job.objects.filter(pk=job.pk, status__in=JOB_ACTIVE_STATES, **guard).update(
                    status=finish.to, termination_reason=finish.reason, exit_status=finish.exit_status,
                    finished_at=now, status_message=finish.message, lease_until=None, updated_at=now):
                continue
            done.add(job.pk)
            if job.instance_id is not None and job.blocks:
                released[job.instance_id] = released.get(job.instance_id, 0) + job.blocks
            events.append(Event(project_id=job.project_id, resource_type="job", resource_name=job.name,
                                kind=finish.to, message=finish.message or finish.reason, actor=finish.actor))
        for instance_id, blocks in sorted(released.items()):
            give_back_blocks(instance_id=instance_id, blocks=blocks)
        Event.objects.bulk_create(events)
        if any(finishes[pk].to != JobStatus.DONE for pk in done):
            kick("runs.retry_failed_replicas")  # a replacement must not wait for the next tick
    return done


def request_job_stop(*, job: Job, reason: str, actor: str = "") -> bool:
    """Stop a job: one still waiting for placement finishes at once, any other goes ``terminating``
    (the workload loop stops its workload, then releases its blocks)."""
    return job.pk in request_jobs_stop(job_ids=[job.pk], reason=reason, actor=actor)


def request_jobs_stop(*, job_ids, reason: str, actor: str = "") -> set[int]:
    """``request_job_stop`` for many jobs in one transaction; the ids of the jobs that moved.

    Decided by the rows, locked, not by a caller's copy: placement may have assigned a job meanwhile.
    """
    final = JobStatus.ABORTED if reason == JobTerminationReason.ABORTED_BY_USER else JobStatus.TERMINATED
    now = timezone.now()
    # Inside a caller's transaction no savepoint is needed: nothing here is rolled back alone.
    with transaction.atomic(savepoint=False):
        jobs = list(Job.objects.select_for_update(of=("self",))
                    .filter(pk__in=job_ids, status__in=JOB_ACTIVE_STATES).order_by("pk")
                    .only("pk", "project_id", "name", "status", "instance_id"))
        waiting = [j for j in jobs if j.status == JobStatus.SUBMITTED and j.instance_id is None]
        # A job already terminating keeps its reason (an abort escalates it: ``runs.services``).
        others = [j for j in jobs if j not in waiting and j.status != JobStatus.TERMINATING]
        jobs = waiting + others
        Job.objects.filter(pk__in=[j.pk for j in waiting]).update(
            status=final, termination_reason=reason, finished_at=now, lease_until=None, updated_at=now)
        # The lease is dropped (owner too, so the poll that held it cannot put it back) and the job
        # goes first in line: a poll lease or a long queue never delays a stop.
        Job.objects.filter(pk__in=[j.pk for j in others]).update(
            status=JobStatus.TERMINATING, termination_reason=reason, lease_until=None, lease_owner="",
            last_processed_at=None, updated_at=now)
        Event.objects.bulk_create(
            Event(project_id=j.project_id, resource_type="job", resource_name=j.name,
                  kind=final if j in waiting else "terminating", message=reason, actor=actor) for j in jobs)
    return {j.pk for j in jobs}


def record_run_event(run: Run, kind: str, message: str = "", actor: str = "") -> None:
    record_event(project=run.project_id, resource_type="run", resource_name=run.name, kind=kind, message=message,
                 actor=actor)


def start_run_termination(*, run: Run, reason: str, message: str = "", actor: str = "",
                          keep_terminating: bool = False) -> bool:
    """Move an active run to ``terminating`` with ``reason`` and ask every unfinished job to stop.
    ``keep_terminating``: a run already terminating keeps its reason (a policy never overrides a stop)."""
    job_reason = {
        RunTerminationReason.STOPPED_BY_USER: JobTerminationReason.STOPPED_BY_USER,
        RunTerminationReason.ABORTED_BY_USER: JobTerminationReason.ABORTED_BY_USER,
        RunTerminationReason.MAX_DURATION_EXCEEDED: JobTerminationReason.MAX_DURATION_EXCEEDED,
        RunTerminationReason.INACTIVITY_DURATION_EXCEEDED: JobTerminationReason.INACTIVITY_DURATION_EXCEEDED,
        RunTerminationReason.UTILIZATION_POLICY: JobTerminationReason.UTILIZATION_POLICY,
        RunTerminationReason.ALL_JOBS_DONE: JobTerminationReason.DONE,  # stop_criteria: master-done
    }.get(reason, JobTerminationReason.STOPPED_BY_SERVER)
    with transaction.atomic():
        allowed = [s for s in RunStatus if s not in RUN_FINISHED_STATES
                   and not (keep_terminating and s == RunStatus.TERMINATING)]
        moved = compare_and_swap(Run, pk=run.pk, allowed_from=allowed,
                                 to=RunStatus.TERMINATING, termination_reason=reason,
                                 terminating_since=run.terminating_since or timezone.now(),
                                 status_message=message or reason)
        if not moved:
            return False
        record_run_event(run, "terminating", message or reason, actor)
        request_jobs_stop(job_ids=run.jobs.filter(status__in=JOB_ACTIVE_STATES).values("pk"), reason=job_reason,
                          actor=actor)
        # Detaches already under way (jobs that ended before the run stopped) get the run's deadline,
        # or are forced at once on an abort.
        detaching = VolumeAttachment.objects.filter(job__run_id=run.pk)
        if reason == RunTerminationReason.ABORTED_BY_USER:
            request_detach(detaching.filter(status=AttachmentStatus.DETACHING), force=True, actor=actor,
                           why="the run was aborted")
        elif (deadline := force_deadline(run)) is not None:
            set_force_deadline(detaching, force_after=deadline)
    # Jobs that never got an instance finished at once: a run made only of them ends now.
    run.status = RunStatus.TERMINATING
    run.termination_reason, run.status_message = reason, message or reason
    _finish_if_jobs_finished(run)
    return True


def refresh_run_statuses(run_ids, *, _rounds: int = 3) -> None:
    """Derive runs' statuses from their latest jobs (the runs' own transitions all happen here).

    A few queries for many runs: moves to provisioning or running, and the ends of terminating runs,
    are applied per group with one guarded update; failures and completions go one by one. A run that
    moved meanwhile is derived again from fresh rows (``_rounds`` times at most)."""
    # A scheduled run waiting for its time is left alone: its jobs, all ended, are history.
    runs = {run.pk: run for run in Run.objects.filter(pk__in=set(run_ids)).exclude(status__in=RUN_FINISHED_STATES)
            .exclude(status=RunStatus.PENDING, next_triggered_at__isnull=False)}
    jobs_by_run: dict[int, dict[tuple[int, int], Job]] = {pk: {} for pk in runs}
    busy_runs = set()
    for job in Job.objects.filter(run_id__in=runs).order_by("run_id", "replica_num", "job_num", "submission_num"):
        jobs_by_run[job.run_id][(job.replica_num, job.job_num)] = job
        if job.status in JOB_ACTIVE_STATES:
            busy_runs.add(job.run_id)
    # A terminating run ends only once every volume of its jobs is detached.
    terminating = [pk for pk, run in runs.items() if run.status == RunStatus.TERMINATING and pk not in busy_runs]
    if terminating:
        busy_runs |= set(VolumeAttachment.objects.filter(job__run_id__in=terminating)
                         .exclude(status=AttachmentStatus.DETACHED).values_list("job__run_id", flat=True))
    moves: dict[tuple, list[Run]] = {}
    for pk, run in runs.items():
        # A replica scaled down (or replaced by a rolling update) is no longer part of the run.
        latest = [job for job in jobs_by_run[pk].values() if job.termination_reason != JobTerminationReason.SCALED_DOWN]
        update_health(run, latest)
        target = _target_status(run, latest)
        if target is None:
            continue
        if target in (RunStatus.PROVISIONING, RunStatus.RUNNING):
            moves.setdefault((run.status, target, ()), []).append(run)
        elif run.status == RunStatus.TERMINATING:
            # Every job finished: the run ends (many at once after a mass stop), or waits for its next time.
            if pk not in busy_runs and not rearm_if_scheduled(run):
                to, changes = _ending(run)
                moves.setdefault((run.status, to, tuple(sorted(changes.items()))), []).append(run)
        else:
            _settle_run(run, latest)
    raced = set()
    for (source, target, changes), group in moves.items():
        raced |= _move_group(group, source, target, **dict(changes))
    if raced and _rounds > 1:
        refresh_run_statuses(raced, _rounds=_rounds - 1)


def _target_status(run: Run, latest: list[Job]) -> str | None:
    """Where the run should be, given its latest jobs; None when it stays where it is."""
    if run.status == RunStatus.TERMINATING:
        return RunStatus.TERMINATED  # settled by _settle_run once every job is finished
    statuses = {job.status for job in latest}
    if _masters_done(run, latest):
        return RunStatus.DONE  # settled by _settle_run: the run ends, its workers are stopped
    # The run is not terminating, so a job that ended without success failed on the server's side.
    if statuses & {JobStatus.FAILED, JobStatus.ABORTED, JobStatus.TERMINATED} or statuses == {JobStatus.DONE}:
        return RunStatus.DONE  # settled by _settle_run: done, failing, or retrying a replica
    for status, target in ((JobStatus.RUNNING, RunStatus.RUNNING), (JobStatus.PROVISIONING, RunStatus.PROVISIONING)):
        if status in statuses:
            return None if run.status == target else target
    retrying = any(job.status == JobStatus.SUBMITTED and job.submission_num > 0 for job in latest)
    if retrying and run.status in (RunStatus.RUNNING, RunStatus.PROVISIONING):
        return RunStatus.PENDING  # nothing runs: every replica waits for its retry
    return None


def _move_group(group: list[Run], source: str, target: str, **changes) -> set[int]:
    """Move every run of ``group`` from ``source`` to ``target`` with one guarded update, or each that
    is still in ``source`` one by one; returns the ids of the runs that had moved on meanwhile."""
    changes.setdefault("status_message", "")
    if target in RUN_FINISHED_STATES:
        changes.setdefault("finished_at", timezone.now())
    with transaction.atomic():
        moved = Run.objects.filter(pk__in=[r.pk for r in group], status=source).update(
            status=target, updated_at=timezone.now(), **changes)
        if moved != len(group):
            transaction.set_rollback(True)  # someone else moved some: go one by one instead
        else:
            Event.objects.bulk_create(Event(project_id=r.project_id, resource_type="run", resource_name=r.name,
                                            kind=target, message=changes.get("termination_reason", ""))
                                      for r in group)
            if source == RunStatus.TERMINATING and target in RUN_FINISHED_STATES:
                runs_ended(group, target)
            return set()
    # Only from the status our target was derived from: a run that moved on was moved by someone who
    # read its jobs after us or before us. Which one is unknown, so it is derived again from fresh rows.
    return {run.pk for run in group if not _move(run, target, **changes)}


def _settle_run(run: Run, latest: list[Job]) -> None:
    """A run that is not terminating, with a failed replica or with every job done.

    Every job done: the run is ``done``. A failed replica is retried alone when the run's ``retry``
    covers its failure (``runs.retries``): its other nodes are stopped, then it is resubmitted, and
    the other replicas go on untouched. Otherwise the run fails fast: it goes ``terminating`` (with
    ``retry_limit_exceeded`` when a retry limit was hit) and every job is stopped. A scheduled run
    neither finishes done nor failed: it waits for its next time (``runs.schedules``)."""
    if masters := _masters_done(run, latest):
        # The one stop path (workloads, then volumes); the workers end ``done`` and the run ``done``.
        why = f"master job {masters[0].name} finished (stop_criteria: master-done)"
        if start_run_termination(run=run, reason=RunTerminationReason.ALL_JOBS_DONE, message=why):
            Job.objects.filter(run_id=run.pk, status=JobStatus.TERMINATING, status_message="",
                               termination_reason=JobTerminationReason.DONE).update(status_message=f"stopped: {why}")
        return
    replicas: dict[int, list[Job]] = {}
    for job in latest:
        replicas.setdefault(job.replica_num, []).append(job)
    failing = {r: nodes for r, nodes in replicas.items() if any(n.status in retries.FAILED_STATES for n in nodes)}
    if not failing:
        if all(job.status == JobStatus.DONE for job in latest) and not rearm_if_scheduled(run):
            _move(run, RunStatus.DONE, termination_reason=RunTerminationReason.ALL_JOBS_DONE,
                  finished_at=timezone.now(), status_message="")
        return
    waiting = ""
    for nodes in failing.values():
        # The failure that ended the replica (not a sibling node stopped because of it).
        failed = sorted((n for n in nodes if n.status in retries.FAILED_STATES),
                        key=lambda n: (n.termination_reason == JobTerminationReason.STOPPED_BY_SERVER,
                                       n.finished_at or timezone.now()))[0]
        why = f"job {failed.name} failed: {failed.status_message or failed.termination_reason}"
        decision = retries.verdict(run, failed, retries.history_of(failed))
        if not decision.retry:
            reason = RunTerminationReason.RETRY_LIMIT_EXCEEDED if decision.limit else {
                JobTerminationReason.NO_CAPACITY: RunTerminationReason.NO_CAPACITY,
                JobTerminationReason.VOLUME_ERROR: RunTerminationReason.VOLUME_ERROR,
            }.get(failed.termination_reason, RunTerminationReason.JOB_FAILED)
            start_run_termination(run=run, reason=reason, message=f"{decision.limit}; {why}" if decision.limit
                                  else why)
            return
        siblings = [n.pk for n in nodes if n.status in JOB_ACTIVE_STATES]
        if siblings:  # a multi-node replica fails whole: its other nodes stop first
            request_jobs_stop(job_ids=siblings, reason=JobTerminationReason.STOPPED_BY_SERVER)
            kick("runs.process_jobs")
        elif retries.resubmit_replica(run, nodes, decision, why):
            waiting = f"retrying replica {nodes[0].replica_num}: {why}"
    others = [j for j in latest if j.replica_num not in failing]
    if waiting and not any(j.status in (JobStatus.RUNNING, JobStatus.PROVISIONING) for j in others):
        _move(run, RunStatus.PENDING, status_message=waiting)  # nothing runs until a retry is placed


def _masters_done(run: Run, latest: list[Job]) -> list[Job]:
    """With ``stop_criteria: master-done`` (dstack), a replica is done once its master (job_num 0)
    finished with success, whatever its workers do: the masters that are, else []. (A task has one
    replica; a service's replicas are single nodes, each its own master.)"""
    if run.spec.get("stop_criteria") != "master-done":
        return []
    masters = [job for job in latest if job.job_num == 0]
    return masters if masters and all(job.status == JobStatus.DONE for job in masters) else []


def _move(run: Run, to: str, **changes) -> bool:
    if run.status == to:
        return False
    with transaction.atomic():
        moved = compare_and_swap(Run, pk=run.pk, allowed_from=(run.status,), to=to, **changes)
        if moved:
            record_run_event(run, to, changes.get("termination_reason", ""))
            if run.status == RunStatus.TERMINATING and to in RUN_FINISHED_STATES:
                runs_ended([run], to)
    if moved:
        run.status = to
    return moved


# Endings that are not failures (the run ends ``terminated``), and the message they leave.
FINAL_MESSAGE_BY_USER = {
    RunTerminationReason.STOPPED_BY_USER: "stopped by the user",
    RunTerminationReason.ABORTED_BY_USER: "aborted by the user",
    RunTerminationReason.MAX_DURATION_EXCEEDED: "max_duration exceeded",
}
# Stops by one of the run's own policies (``runs.utilization``): not failures either (``terminated``),
# and the run keeps the message that names the numbers.
POLICY_STOPS = (RunTerminationReason.INACTIVITY_DURATION_EXCEEDED, RunTerminationReason.UTILIZATION_POLICY)


def _ending(run: Run) -> tuple[str, dict]:
    """Where a terminating run ends once its jobs are finished: ``terminated`` if a user stopped it.

    The message says how the run ended ("aborting" would go stale); a failure keeps its cause."""
    by_user = FINAL_MESSAGE_BY_USER.get(run.termination_reason)
    changes = {"termination_reason": run.termination_reason,
               "status_message": by_user if by_user else run.status_message}
    if run.termination_reason == RunTerminationReason.ALL_JOBS_DONE:  # stop_criteria: master-done
        return RunStatus.DONE, changes
    return (RunStatus.TERMINATED if by_user or run.termination_reason in POLICY_STOPS else RunStatus.FAILED), changes


def _finish_if_jobs_finished(run: Run) -> None:
    """A terminating run (``run`` as it is now) ends once all its jobs are finished."""
    if run.jobs.filter(status__in=JOB_ACTIVE_STATES).exists() or VolumeAttachment.objects.filter(
            job__run_id=run.pk).exclude(status=AttachmentStatus.DETACHED).exists():
        return
    if rearm_if_scheduled(run):
        return
    to, changes = _ending(run)
    _move(run, to, finished_at=timezone.now(), **changes)


def force_deadline(run: Run):
    """When the detaches of a terminating run turn forced (its ``stop_duration``); None: never."""
    seconds = run.spec.get("stop_duration")
    if seconds is None:
        return None
    return (run.terminating_since or timezone.now()) + timedelta(seconds=seconds)
