"""Job workloads through the drivers, on the one reconcile pipeline (``core.pipeline``): start jobs
whose instance is up, stop terminating ones, poll running ones, and settle the jobs of instances
that are going or gone. No transaction spans a driver call; starts and polls are batched per backend.
"""

from django.db.models import Q

from backends.drivers.base import JobLaunch, NotFoundError, TransientError
from backends.drivers.registry import pass_drivers
from core.pipeline import Reconciler, Step
from fleets.models import INSTANCE_UP_STATES, InstanceStatus
from runs.jobs import (
    Finish,
    finish_job,
    finish_jobs,
    mark_jobs_running,
    refresh_run_statuses,
    request_job_stop,
    return_job_to_queue,
)
from runs.models import Job, JobStatus, JobTerminationReason, RunStatus

POLL_SECONDS = 5
FINAL_STATUS_FOR_STOP = {
    JobTerminationReason.ABORTED_BY_USER: JobStatus.ABORTED,
}


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

    def finish(self) -> None:
        refresh_run_statuses(self.touched_runs)


class Starter(_JobLoop):
    """Jobs placed on an instance that is up get their workload started."""

    def due(self) -> Q:
        return Q(status=JobStatus.PROVISIONING, instance__status__in=INSTANCE_UP_STATES)

    def call(self, rows):
        def start(driver, group):
            launches = [JobLaunch(job_name=job.name, instance_id=job.instance.provider_instance_id,
                                  commands=job.run.spec.get("commands", []), env=_env(job),
                                  client_token=f"stackyard-job-{job.pk}") for job in group]
            return dict(zip((job.pk for job in group), driver.start_jobs(jobs=launches), strict=True))

        return self.drivers.ask(rows, _backend, start)

    def record_batch(self, rows, results):
        steps, started = {}, []
        for job in rows:
            result = results.get(job.pk)
            if isinstance(result, TransientError) or result is None:
                steps[job.pk] = Step(failed=f"provider error, retrying: {result}")
            elif isinstance(result, Exception):
                moved = finish_job(job=job, to=JobStatus.FAILED, reason=JobTerminationReason.SERVER_ERROR,
                                   message=f"could not start: {result}")
                steps[job.pk] = self.changed(job, moved)
            else:
                started.append((job, result))
        moved = mark_jobs_running(started)  # one transaction for the batch
        for job, workload_id in started:
            if job.pk not in moved:  # stopped while it was starting: record the workload so the stop reaches it
                Job.objects.filter(pk=job.pk, workload_id="").update(workload_id=workload_id)
            steps[job.pk] = self.changed(job, job.pk in moved, after=POLL_SECONDS)
        return steps


def _backend(job: Job):
    return job.instance.backend


def _env(job: Job) -> dict:
    spec = job.run.spec
    return {**spec.get("env", {}), "DSTACK_NODES_NUM": str(spec.get("nodes", 1)),
            "DSTACK_NODE_RANK": str(job.job_num), "DSTACK_RUN_NAME": job.run.name}


class Stopper(_JobLoop):
    """Terminating jobs have their workload stopped (many per driver call), then finish and give
    their blocks back (the batch in one transaction)."""

    def due(self) -> Q:
        return Q(status=JobStatus.TERMINATING)

    def call(self, rows):
        def stop(driver, group):
            stopped = driver.stop_jobs(workload_ids=[job.workload_id for job in group])
            return {job.pk: stopped.get(job.workload_id) for job in group}

        started = [job for job in rows if job.workload_id and job.instance is not None
                   and job.instance.backend is not None]
        answers = self.drivers.ask(started, _backend, stop)
        # Never started, or not found at the provider: nothing is left to stop.
        return {job.pk: None if isinstance(answers.get(job.pk), NotFoundError) else answers.get(job.pk)
                for job in rows}

    def record_batch(self, rows, results):
        steps, finishes = {}, []
        for job in rows:
            if isinstance(results.get(job.pk), Exception):
                steps[job.pk] = Step(failed=f"stop failed, retrying: {results[job.pk]}")
            else:
                final = FINAL_STATUS_FOR_STOP.get(job.termination_reason, JobStatus.TERMINATED)
                finishes.append(Finish(job.pk, final, job.termination_reason))
        finished = finish_jobs(finishes)
        for job in rows:
            steps.setdefault(job.pk, self.changed(job, job.pk in finished))
        return steps


class Poller(_JobLoop):
    """Running jobs are polled, many per driver call, every ``POLL_SECONDS`` at most."""

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
            if job.run.status not in (RunStatus.RUNNING, RunStatus.TERMINATING):
                self.touched_runs.add(job.run_id)  # level-triggered: a run status that lags is derived again
            if job.status_message:
                Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING).update(status_message="")
            return Step(after=POLL_SECONDS)
        if state.status == "done":
            return self.changed(job, finish_job(job=job, to=JobStatus.DONE, reason=JobTerminationReason.DONE,
                                                exit_status=0))
        interrupted = state.exit_status is None and "interrupt" in (state.message or "")
        reason = JobTerminationReason.INTERRUPTED if interrupted else JobTerminationReason.EXITED_WITH_ERROR
        message = state.message or f"exited with status {state.exit_status}"
        return self.changed(job, finish_job(job=job, to=JobStatus.FAILED, reason=reason,
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
        return self.changed(job, finish_job(job=job, to=JobStatus.FAILED, reason=reason, message=message))


def process_jobs(*, limit: int | None = None) -> int:
    """One pass over the jobs that need the driver (or whose instance went); how many changed.
    ``limit`` sets the batch size (each loop still runs until nothing is due)."""
    changed = 0
    for loop_class in (Evictor, Starter, Stopper, Poller):
        loop = loop_class()
        loop.batch_size = limit or loop.batch_size
        changed += loop.run()
    return changed
