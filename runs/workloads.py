"""Job workloads through the drivers: start jobs whose instance is up, poll running ones, stop
terminating ones. Each job is claimed with a lease; no transaction spans a driver call."""

from django.db.models import Q

from backends.drivers.base import DriverError, JobLaunch, NotFoundError, TransientError
from backends.drivers.registry import get_driver
from core import leases
from fleets.models import INSTANCE_UP_STATES
from runs.jobs import finish_job, mark_jobs_running, refresh_run_statuses
from runs.models import Job, JobStatus, JobTerminationReason

POLL_SECONDS = 5
FINAL_STATUS_FOR_STOP = {
    JobTerminationReason.ABORTED_BY_USER: JobStatus.ABORTED,
}


class Pass:
    """One pass: a driver per backend, and the runs whose status must be re-derived at the end."""

    def __init__(self):
        self.drivers: dict[int, object] = {}
        self.touched_runs: set[int] = set()

    def driver(self, backend):
        if backend.pk not in self.drivers:
            self.drivers[backend.pk] = get_driver(backend)
        return self.drivers[backend.pk]


def process_jobs(*, limit: int = 200) -> int:
    """One pass over the jobs that need the driver; returns how many changed state."""
    changed, current = 0, Pass()
    ready = _claimed(Q(status=JobStatus.PROVISIONING, instance__status__in=INSTANCE_UP_STATES), limit, 30)
    for job in _start_all(ready, current):
        changed += 1
        current.touched_runs.add(job.run_id)
    for job in _claimed(Q(status=JobStatus.TERMINATING), limit, 30):
        if _stop(job, current):
            changed += 1
            current.touched_runs.add(job.run_id)
    # Running jobs are polled at most every few seconds (the lease is kept), many per driver call.
    running = _claimed(Q(status=JobStatus.RUNNING), limit, POLL_SECONDS)
    for job, state in _poll_states(running, current):
        if _apply_poll(job, state):
            changed += 1
            current.touched_runs.add(job.run_id)
    refresh_run_statuses(current.touched_runs)
    return changed


def _claimed(condition: Q, limit: int, lease_seconds: int) -> list[Job]:
    ids = leases.claim(Job, condition, limit=limit, lease_seconds=lease_seconds)
    return list(Job.objects.filter(pk__in=ids).select_related("run", "instance__backend").order_by("pk"))


def _poll_states(jobs: list[Job], current: Pass):
    by_backend: dict[int, list[Job]] = {}
    for job in jobs:
        by_backend.setdefault(job.instance.backend_id, []).append(job)
    for group in by_backend.values():
        try:
            states = current.driver(group[0].instance.backend).poll_jobs(workload_ids=[j.workload_id for j in group])
        except TransientError:
            continue  # the whole call failed; the next pass polls again
        except DriverError as err:
            states = {j.workload_id: err for j in group}
        for job in group:
            yield job, states.get(job.workload_id)


def _start_all(jobs: list[Job], current: Pass) -> list[Job]:
    """Start the workloads of jobs whose instance is up, many per driver call; the changed jobs."""
    by_backend: dict[int, list[Job]] = {}
    for job in jobs:
        by_backend.setdefault(job.instance.backend_id, []).append(job)
    changed: list[Job] = []
    for group in by_backend.values():
        launches = [JobLaunch(job_name=job.name, instance_id=job.instance.provider_instance_id,
                              commands=job.run.spec.get("commands", []), env=_env(job)) for job in group]
        try:
            results = current.driver(group[0].instance.backend).start_jobs(jobs=launches)
        except DriverError as err:
            results = [err] * len(group)
        started = []
        for job, result in zip(group, results, strict=True):
            if isinstance(result, TransientError):
                Job.objects.filter(pk=job.pk).update(status_message=f"provider error, retrying: {result}",
                                                     lease_until=None)
            elif isinstance(result, DriverError):
                if finish_job(job=job, to=JobStatus.FAILED, reason=JobTerminationReason.SERVER_ERROR,
                              message=f"could not start: {result}"):
                    changed.append(job)
            else:
                started.append((job, result))
        moved = mark_jobs_running(started)
        for job, workload_id in started:
            if job.pk in moved:
                changed.append(job)
            else:  # stopped while it was starting: record the workload so the stop reaches it
                Job.objects.filter(pk=job.pk, workload_id="").update(workload_id=workload_id, lease_until=None)
    return changed


def _env(job: Job) -> dict:
    spec = job.run.spec
    return {**spec.get("env", {}), "DSTACK_NODES_NUM": str(spec.get("nodes", 1)),
            "DSTACK_NODE_RANK": str(job.job_num), "DSTACK_RUN_NAME": job.run.name}


def _apply_poll(job: Job, state) -> bool:
    if state is None or isinstance(state, TransientError):
        return False
    if isinstance(state, DriverError):
        return finish_job(job=job, to=JobStatus.FAILED, reason=JobTerminationReason.SERVER_ERROR, message=str(state))
    if state.status == "running":
        return False
    if state.status == "done":
        return finish_job(job=job, to=JobStatus.DONE, reason=JobTerminationReason.DONE, exit_status=0)
    interrupted = state.exit_status is None and "interrupt" in (state.message or "")
    reason = JobTerminationReason.INTERRUPTED if interrupted else JobTerminationReason.EXITED_WITH_ERROR
    message = state.message or f"exited with status {state.exit_status}"
    return finish_job(job=job, to=JobStatus.FAILED, reason=reason, exit_status=state.exit_status, message=message)


def _stop(job: Job, current: Pass) -> bool:
    if job.workload_id and job.instance is not None and job.instance.backend is not None:
        try:
            current.driver(job.instance.backend).stop_job(workload_id=job.workload_id)
        except NotFoundError:
            pass  # nothing left to stop
        except DriverError as err:
            Job.objects.filter(pk=job.pk).update(status_message=f"stop failed, retrying: {err}", lease_until=None)
            return False
    final = FINAL_STATUS_FOR_STOP.get(job.termination_reason, JobStatus.TERMINATED)
    return finish_job(job=job, to=final, reason=job.termination_reason)
