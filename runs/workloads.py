"""Job workloads through the drivers: start jobs whose instance is up, poll running ones, stop
terminating ones. Each job is claimed with a lease; no transaction spans a driver call."""

from django.db.models import Q

from backends.drivers.base import DriverError, NotFoundError, TransientError
from backends.drivers.registry import get_driver
from fleets.models import INSTANCE_UP_STATES
from projects import leases
from runs.jobs import finish_job, mark_job_running, refresh_run_statuses
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
    steps = (
        (Q(status=JobStatus.PROVISIONING, instance__status__in=INSTANCE_UP_STATES), 30, _start),
        (Q(status=JobStatus.TERMINATING), 30, _stop),
    )
    for condition, lease_seconds, step in steps:
        for job in _claimed(condition, limit, lease_seconds):
            if step(job, current):
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


def _start(job: Job, current: Pass) -> bool:
    instance = job.instance
    try:
        workload_id = current.driver(instance.backend).start_job(
            job_name=job.name, instance_id=instance.provider_instance_id, commands=job.run.spec.get("commands", []),
            env={**job.run.spec.get("env", {}), "DSTACK_NODES_NUM": str(job.run.spec.get("nodes", 1)),
                 "DSTACK_NODE_RANK": str(job.job_num), "DSTACK_RUN_NAME": job.run.name},
        )
    except TransientError as err:
        Job.objects.filter(pk=job.pk).update(status_message=f"provider error, retrying: {err}", lease_until=None)
        return False
    except DriverError as err:
        return finish_job(job=job, to=JobStatus.FAILED, reason=JobTerminationReason.SERVER_ERROR,
                          message=f"could not start: {err}")
    moved = mark_job_running(job=job, workload_id=workload_id)
    if not moved:
        # Stopped while it was starting: record the workload so the stop reaches it.
        Job.objects.filter(pk=job.pk, workload_id="").update(workload_id=workload_id, lease_until=None)
    return moved


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
