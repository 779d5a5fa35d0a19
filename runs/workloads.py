"""Job workloads through the drivers: start jobs whose instance is up, poll running ones, stop
terminating ones. Each job is claimed with a lease; no transaction spans a driver call."""

from django.db.models import Q

from backends.drivers.base import DriverError, NotFoundError, TransientError
from backends.drivers.registry import get_driver
from fleets.models import INSTANCE_UP_STATES
from projects import leases
from runs.jobs import finish_job, mark_job_running, refresh_run_status
from runs.models import Job, JobStatus, JobTerminationReason

FINAL_STATUS_FOR_STOP = {
    JobTerminationReason.ABORTED_BY_USER: JobStatus.ABORTED,
}


def process_jobs(*, limit: int = 200) -> int:
    """One pass over the jobs that need the driver; returns how many changed state."""
    changed = 0
    for pk in leases.claim(Job, Q(status=JobStatus.PROVISIONING, instance__status__in=INSTANCE_UP_STATES),
                           limit=limit, lease_seconds=30):
        changed += _start(_load(pk))
    for pk in leases.claim(Job, Q(status=JobStatus.TERMINATING), limit=limit, lease_seconds=30):
        changed += _stop(_load(pk))
    # Running jobs are polled at most every few seconds: the lease is not released after a poll.
    for pk in leases.claim(Job, Q(status=JobStatus.RUNNING), limit=limit, lease_seconds=3):
        changed += _poll(_load(pk))
    return changed


def _load(pk: int) -> Job:
    return Job.objects.select_related("run", "instance__backend").get(pk=pk)


def _settle(job: Job, changed: bool) -> int:
    refresh_run_status(run_id=job.run_id)
    return int(changed)


def _start(job: Job) -> int:
    instance = job.instance
    try:
        workload_id = get_driver(instance.backend).start_job(
            job_name=job.name, instance_id=instance.provider_instance_id, commands=job.run.spec.get("commands", []),
            env={**job.run.spec.get("env", {}), "DSTACK_NODES_NUM": str(job.run.spec.get("nodes", 1)),
                 "DSTACK_NODE_RANK": str(job.job_num), "DSTACK_RUN_NAME": job.run.name},
        )
    except TransientError as err:
        Job.objects.filter(pk=job.pk).update(status_message=f"provider error, retrying: {err}", lease_until=None)
        return 0
    except DriverError as err:
        return _settle(job, finish_job(job=job, to=JobStatus.FAILED, reason=JobTerminationReason.SERVER_ERROR,
                                       message=f"could not start: {err}"))
    moved = mark_job_running(job=job, workload_id=workload_id)
    if not moved:
        # Stopped while it was starting: record the workload so the stop reaches it.
        Job.objects.filter(pk=job.pk, workload_id="").update(workload_id=workload_id)
    Job.objects.filter(pk=job.pk).update(lease_until=None)
    return _settle(job, moved)


def _poll(job: Job) -> int:
    try:
        state = get_driver(job.instance.backend).poll_job(workload_id=job.workload_id)
    except TransientError:
        return 0
    except DriverError as err:
        return _settle(job, finish_job(job=job, to=JobStatus.FAILED, reason=JobTerminationReason.SERVER_ERROR,
                                       message=str(err)))
    if state.status == "running":
        return 0
    if state.status == "done":
        return _settle(job, finish_job(job=job, to=JobStatus.DONE, reason=JobTerminationReason.DONE, exit_status=0))
    interrupted = state.exit_status is None and "interrupt" in (state.message or "")
    reason = JobTerminationReason.INTERRUPTED if interrupted else JobTerminationReason.EXITED_WITH_ERROR
    message = state.message or f"exited with status {state.exit_status}"
    return _settle(job, finish_job(job=job, to=JobStatus.FAILED, reason=reason, exit_status=state.exit_status,
                                   message=message))


def _stop(job: Job) -> int:
    if job.workload_id and job.instance is not None and job.instance.backend is not None:
        try:
            get_driver(job.instance.backend).stop_job(workload_id=job.workload_id)
        except NotFoundError:
            pass  # nothing left to stop
        except DriverError as err:
            Job.objects.filter(pk=job.pk).update(status_message=f"stop failed, retrying: {err}", lease_until=None)
            return 0
    final = FINAL_STATUS_FOR_STOP.get(job.termination_reason, JobStatus.TERMINATED)
    return _settle(job, finish_job(job=job, to=final, reason=job.termination_reason))
