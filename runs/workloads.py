"""Job workloads through the drivers, on the one reconcile pipeline (``core.pipeline``): start jobs
whose instance is up, stop terminating ones, poll running ones, and settle the jobs of instances
that are going or gone. No transaction spans a driver call; starts and polls are batched per backend.
"""

from datetime import timedelta

from django.conf import settings
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from backends.drivers.base import JobFailure, JobLaunch, NotFoundError, TransientError
from backends.drivers.registry import pass_drivers
from core.kicks import kick
from core.pipeline import Reconciler, Step, group_by
from fleets.models import INSTANCE_UP_STATES, InstanceStatus
from runs.groups import job_spec
from runs.health import record_probes
from runs.jobs import (
    end_job,
    finish_jobs,
    force_deadline,
    mark_jobs_running,
    refresh_run_statuses,
    request_job_stop,
    return_job_to_queue,
    stopped_finish,
)
from runs.models import Job, JobStatus, JobTerminationReason, Run, RunStatus, RunType
from runs.utilization import record_activity
from volumes.models import AttachmentStatus, VolumeAttachment
from volumes.services import request_detach

# How often a running job's workload (and its probes) is polled: STACKYARD_JOB_POLL_INTERVAL, 5 s.
POLL_SECONDS = settings.JOB_POLL_INTERVAL
# The job's termination reason for the provider's typed failure of its workload.
FAILURE_REASONS = {
    JobFailure.ERROR: JobTerminationReason.EXITED_WITH_ERROR,
    JobFailure.INTERRUPTION: JobTerminationReason.INTERRUPTED,
    JobFailure.NO_CAPACITY: JobTerminationReason.NO_CAPACITY,
}
# A job waiting for its volumes to detach is looked at again this often (and at once when one does).
DETACH_WAIT_SECONDS = 2
# A node held back by its run's ``startup_order`` is looked at again this often (and at once when the
# node it waits for starts in this worker's pass: ``Starter.after_batch``).
ORDER_WAIT_SECONDS = 2


class _JobLoop(Reconciler):
    """A loop over jobs: a driver per backend, and the runs whose status is re-derived at the end."""

    model = Job
    batch_size = 200
    lease_seconds = 30

    def __init__(self):
        self.drivers = pass_drivers()
        self.touched_runs: set[int] = set()

    def load(self, pks):
        return list(Job.objects.filter(pk__in=pks).select_related("run", "instance__backend").order_by("pk"))

    def changed(self, job: Job, moved: bool, **step) -> Step:
        if moved:
            self.touched_runs.add(job.run_id)
        return Step(changed=moved, **step)

    def after_batch(self) -> None:
        # Per batch, not per pass: a run ends as soon as the batch that finished its jobs is recorded.
        touched, self.touched_runs = self.touched_runs, set()
        refresh_run_statuses(touched)

    def finish(self) -> None:
        self.after_batch()


class VolumeLost(Exception):
    """A volume of the job failed to attach, or was detached before the job started."""


class Starter(_JobLoop):
    """Jobs placed on an instance that is up, with every volume attached, get their workload
    started; a job whose volume could not be attached fails (``volume_error``). The nodes of a
    multi-node task start in its ``startup_order`` (``_startup_waits``)."""

    def __init__(self):
        super().__init__()
        self.awaited: set[tuple[int, int, int]] = set()  # (run, replica, submission) whose nodes may wait

    def due(self) -> Q:
        attaching = VolumeAttachment.objects.filter(job=OuterRef("pk"), status=AttachmentStatus.ATTACHING)
        return Q(status=JobStatus.PROVISIONING, instance__status__in=INSTANCE_UP_STATES) & ~Q(Exists(attaching))

    def call(self, rows):
        attachments = group_by(VolumeAttachment.objects.filter(job__in=rows).select_related("volume")
                               .order_by("pk"), lambda a: a.job_id)
        results, ready = {}, []
        for pk, message in _startup_waits(rows).items():
            results[pk] = AwaitingNodes(message)
        for job in rows:
            if job.pk in results:
                continue
            mine = [a for a in attachments.get(job.pk, []) if a.instance_id == job.instance_id]
            lost = [a for a in mine if a.status != AttachmentStatus.ATTACHED]
            if lost:
                results[job.pk] = VolumeLost("; ".join(
                    f"volume {a.volume.name} " + ("could not be attached" if a.status == AttachmentStatus.FAILED
                                                  else f"is {a.status}") + (f": {a.error}" if a.error else "")
                    for a in lost))
            else:
                ready.append((job, mine))
        mounts = {job.pk: _mounts(job, mine) for job, mine in ready}

        def start(driver, group):
            launches = [_launch(job, mounts[job.pk]) for job in group]
            return dict(zip((job.pk for job in group), driver.start_jobs(jobs=launches), strict=True))

        results.update(self.drivers.ask([job for job, _ in ready], _backend, start))
        return results

    def record_batch(self, rows, results):
        steps, started = {}, []
        for job in rows:
            result = results.get(job.pk)
            if isinstance(result, AwaitingNodes):  # no driver call: shown on the job, looked at again soon
                Job.objects.filter(pk=job.pk, status=JobStatus.PROVISIONING).exclude(
                    status_message=result.message).update(status_message=result.message)
                steps[job.pk] = Step(after=ORDER_WAIT_SECONDS)
            elif isinstance(result, TransientError) or result is None:
                steps[job.pk] = Step(failed=f"provider error, retrying: {result}")
            elif isinstance(result, VolumeLost):
                moved = end_job(job=job, to=JobStatus.FAILED, reason=JobTerminationReason.VOLUME_ERROR,
                                message=str(result))
                steps[job.pk] = self.changed(job, moved)
            elif isinstance(result, Exception):
                moved = end_job(job=job, to=JobStatus.FAILED, reason=JobTerminationReason.SERVER_ERROR,
                                message=f"could not start: {result}")
                steps[job.pk] = self.changed(job, moved)
            else:
                started.append((job, result))
        moved = mark_jobs_running(started)  # one transaction for the batch
        for job, workload_id in started:
            if job.pk not in moved:  # stopped while it was starting: record the workload so the stop reaches it
                Job.objects.filter(pk=job.pk, workload_id="").update(workload_id=workload_id)
            steps[job.pk] = self.changed(job, job.pk in moved, after=POLL_SECONDS)
            if job.pk in moved and _ordered(job.run):
                self.awaited.add((job.run_id, job.replica_num, job.submission_num))
        return steps

    def after_batch(self) -> None:
        """Nodes held back for the nodes that just started are due again at once (once this batch has
        given its rows back), so this very pass starts them: an order costs no extra tick."""
        awaited, self.awaited = self.awaited, set()
        if awaited:
            replicas = Q(pk__in=[])
            for run_id, replica, submission in awaited:
                replicas |= Q(run_id=run_id, replica_num=replica, submission_num=submission)
            # A row another worker holds is left alone: it is due again ORDER_WAIT_SECONDS after it.
            Job.objects.filter(replicas, status=JobStatus.PROVISIONING, lease_owner="").update(
                lease_until=None, last_processed_at=None)
        super().after_batch()


class AwaitingNodes:
    """A node that must not start yet (its run's ``startup_order``), and what it waits for."""

    def __init__(self, message: str):
        self.message = message


def _ordered(run: Run) -> bool:
    return run.spec.get("nodes", 1) > 1 and run.spec.get("startup_order", "any") != "any"


def _startup_waits(jobs: list[Job]) -> dict[int, str]:
    """The jobs among ``jobs`` that must not start yet, each with what it waits for.

    dstack's ``startup_order`` for a multi-node task, whose job_num 0 is the master: ``master-first``
    starts a worker only once the master's workload has started, ``workers-first`` starts the master
    only once every worker's has, ``any`` starts each node as soon as it is placed. Nodes count within
    one submission of a replica (a retry starts in order again). A node that started and already ended
    no longer holds the others back; one that fails ends the replica, which stops the waiting nodes."""
    ordered = [job for job in jobs if _ordered(job.run)]
    if not ordered:
        return {}
    started: dict[tuple[int, int, int], set[int]] = {}
    for run_id, replica, submission, job_num in Job.objects.filter(
            run_id__in={job.run_id for job in ordered}, started_at__isnull=False).values_list(
            "run_id", "replica_num", "submission_num", "job_num"):
        started.setdefault((run_id, replica, submission), set()).add(job_num)
    waits = {}
    for job in ordered:
        up = started.get((job.run_id, job.replica_num, job.submission_num), set())
        order, workers = job.run.spec["startup_order"], job.run.spec["nodes"] - 1
        if order == "master-first" and job.job_num != 0 and 0 not in up:
            waits[job.pk] = "waiting for the master to start (startup_order: master-first)"
        elif order == "workers-first" and job.job_num == 0 and len(up - {0}) < workers:
            waits[job.pk] = (f"waiting for the workers to start ({len(up - {0})}/{workers} started; "
                             "startup_order: workers-first)")
    return waits


def _mounts(job: Job, attachments: list[VolumeAttachment]) -> list[dict]:
    """What the workload mounts: each attached volume's device, each instance volume's directory."""
    by_name = {a.volume.name: a for a in attachments}
    mounts = []
    for mount in job.volumes or []:
        if "name" in mount and mount["name"] in by_name:
            attachment = by_name[mount["name"]]
            mounts.append({"path": mount["path"], "volume_id": attachment.volume.volume_id,
                           "device_name": attachment.device_name})
        elif "instance_path" in mount:
            mounts.append({"path": mount["path"], "instance_path": mount["instance_path"]})
    return mounts


def _backend(job: Job):
    return job.instance.backend


def _launch(job: Job, mounts: list) -> JobLaunch:
    """What the driver starts for ``job``: its replica group's commands, image and workload (runs.groups).
    A dev environment runs its ``init`` and then stays up until it is stopped (or idle past
    ``inactivity_duration``): it never ends on its own, as in dstack."""
    spec = job_spec(job)
    commands = list(spec.get("commands") or [])
    if job.run.type == RunType.DEV_ENVIRONMENT:
        commands.append("sleep infinity")
    return JobLaunch(job_name=job.name, instance_id=job.instance.provider_instance_id, commands=commands,
                     env=_env(job), client_token=f"stackyard-job-{job.pk}", mounts=mounts,
                     probes=spec.get("probes") or [], image=spec.get("image"), workload=spec.get("workload") or {})


def _env(job: Job) -> dict:
    spec = job.run.spec
    return {**spec.get("env", {}), "DSTACK_NODES_NUM": str(spec.get("nodes", 1)),
            "DSTACK_NODE_RANK": str(job.job_num), "DSTACK_RUN_NAME": job.run.name}


class Stopper(_JobLoop):
    """Terminating jobs have their workload stopped (many per driver call), then their volumes
    detached, and finish (giving their blocks back, the batch in one transaction) only once the
    provider has confirmed every detach. A job waiting for its volumes is looked at again when a
    detach moves on (``volumes.signals``), or after ``DETACH_WAIT_SECONDS``."""

    def due(self) -> Q:
        return Q(status=JobStatus.TERMINATING)

    def call(self, rows):
        def stop(driver, group):
            stopped = driver.stop_jobs(workload_ids=[job.workload_id for job in group])
            return {job.pk: stopped.get(job.workload_id) for job in group}

        running = [job for job in rows if job.workload_stopped_at is None and job.workload_id
                   and job.instance is not None and job.instance.backend is not None]
        answers = self.drivers.ask(running, _backend, stop)
        # Never started, or not found at the provider: nothing is left to stop.
        return {job.pk: None if isinstance(answers.get(job.pk), NotFoundError) else answers.get(job.pk)
                for job in rows}

    def record_batch(self, rows, results):
        steps, finishes, stopped = {}, [], []
        outstanding = group_by(VolumeAttachment.objects.filter(job__in=rows).exclude(status=AttachmentStatus.DETACHED)
                               .select_related("volume", "instance").order_by("pk"), lambda a: a.job_id)
        for job in rows:
            if isinstance(results.get(job.pk), Exception):
                steps[job.pk] = Step(failed=f"stop failed, retrying: {results[job.pk]}")
                continue
            if job.workload_stopped_at is None:
                stopped.append(job.pk)
            if job.pk in outstanding:
                steps[job.pk] = self._wait_for_volumes(job, outstanding[job.pk])
            else:
                finishes.append(stopped_finish(job))
        Job.objects.filter(pk__in=stopped, workload_stopped_at__isnull=True).update(workload_stopped_at=timezone.now())
        finished = finish_jobs(finishes)
        for job in rows:
            steps.setdefault(job.pk, self.changed(job, job.pk in finished))
        return steps

    def _wait_for_volumes(self, job: Job, attachments: list[VolumeAttachment]) -> Step:
        """The workload is stopped: ask for the detaches not asked yet (forced on an abort, with the
        run's ``stop_duration`` as deadline), and show on the run what it waits for."""
        force = job.termination_reason == JobTerminationReason.ABORTED_BY_USER
        deadline = force_deadline(job.run) if job.run.status == RunStatus.TERMINATING else None
        if deadline is None and job.run.spec.get("stop_duration") is not None:
            deadline = timezone.now() + timedelta(seconds=job.run.spec["stop_duration"])
        asked = [a.pk for a in attachments if a.status != AttachmentStatus.DETACHING or (force and not a.force)]
        if asked:
            request_detach(VolumeAttachment.objects.filter(pk__in=asked), force=force, force_after=deadline,
                           why=f"job {job.name} is stopping")
            if deadline is not None and deadline <= timezone.now():
                kick("volumes.enforce_stop_durations")
        if job.run.status == RunStatus.TERMINATING:
            message = "; ".join(_waiting_for(a, force) for a in attachments)
            Run.objects.filter(pk=job.run_id, status=RunStatus.TERMINATING).exclude(status_message=message).update(
                status_message=message)
        return Step(after=DETACH_WAIT_SECONDS)


def _waiting_for(attachment: VolumeAttachment, force: bool) -> str:
    forced = " (forced)" if attachment.force or force else ""
    error = f"; last attempt failed: {attachment.error}" if attachment.error else ""
    volume, instance = attachment.volume.name, attachment.instance.name
    return f"waiting for volume {volume} to detach from instance {instance}{forced}{error}"


class Poller(_JobLoop):
    """Running jobs are polled, many per driver call, every ``POLL_SECONDS`` at most; what they report
    of their GPUs and attached sessions goes to ``runs.utilization``."""

    def due(self) -> Q:
        return Q(status=JobStatus.RUNNING) & ~Q(workload_id="")

    def call(self, rows):
        def poll(driver, group):
            states = driver.poll_jobs(workload_ids=[job.workload_id for job in group])
            return {job.pk: states.get(job.workload_id) for job in group}

        return self.drivers.ask(rows, _backend, poll)

    def record(self, job, state) -> Step:
        if isinstance(state, Exception) or state is None:
            # Never read as "the job ended": the job loop asks again, and an instance that is really
            # gone is settled by the instance loop, which hears it from the provider.
            return Step(after=POLL_SECONDS, failed=f"could not poll the workload, retrying: {state}")
        if state.status == "running":
            if record_activity(job, state):  # GPU utilization and inactivity; True: a policy stopped the run
                return self.changed(job, True)
            if job.run.status not in (RunStatus.RUNNING, RunStatus.TERMINATING):
                self.touched_runs.add(job.run_id)  # level-triggered: a run status that lags is derived again
            if record_probes(job, state.probes_passing):
                self.touched_runs.add(job.run_id)  # readiness moved: the service's health is derived again
            if job.status_message:
                Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING).update(status_message="")
            return Step(after=POLL_SECONDS)
        if state.status == "done":
            return self.changed(job, end_job(job=job, to=JobStatus.DONE, reason=JobTerminationReason.DONE,
                                             exit_status=0))
        reason = FAILURE_REASONS.get(state.failure, JobTerminationReason.EXITED_WITH_ERROR)
        message = state.message or f"exited with status {state.exit_status}"
        return self.changed(job, end_job(job=job, to=JobStatus.FAILED, reason=reason,
                                         exit_status=state.exit_status, message=message))


class Evictor(_JobLoop):
    """Jobs on an instance that is being terminated are stopped; jobs on an instance that is gone
    finish: back to the queue if it never came up for lack of capacity, else failed."""

    def due(self) -> Q:
        return Q(status__in=(JobStatus.PROVISIONING, JobStatus.RUNNING),
                 instance__status__in=(InstanceStatus.TERMINATING, InstanceStatus.TERMINATED))

    def call(self, rows):
        return {}

    def record(self, job, result) -> Step:
        instance = job.instance
        if instance.status == InstanceStatus.TERMINATING:
            return self.changed(job, request_job_stop(job=job, reason=JobTerminationReason.STOPPED_BY_SERVER))
        message = instance.status_message or f"instance {instance.name} is gone"
        if job.status == JobStatus.PROVISIONING and instance.termination_reason == "no_capacity":
            return self.changed(job, return_job_to_queue(job=job, message=message))
        reason = (JobTerminationReason.NO_CAPACITY if instance.termination_reason == "no_capacity"
                  else JobTerminationReason.INTERRUPTED)
        return self.changed(job, end_job(job=job, to=JobStatus.FAILED, reason=reason, message=message))


def process_jobs(*, limit: int | None = None) -> int:
    """One pass over the jobs that need the driver (or whose instance went); how many changed.
    ``limit`` sets the batch size (each loop still runs until nothing is due)."""
    changed = 0
    for loop_class in (Evictor, Starter, Stopper, Poller):
        loop = loop_class()
        loop.batch_size = limit or loop.batch_size
        changed += loop.run()
    return changed
