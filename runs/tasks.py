"""Celery tasks of the runs app: thin wrappers that call services."""

from celery import shared_task

from runs import placement, rollout, schedules, supervisor, workloads


@shared_task(name="runs.place_jobs", acks_late=True, time_limit=120, soft_time_limit=100)
def place_jobs() -> int:
    return placement.place_jobs()


@shared_task(name="runs.process_jobs", acks_late=True, time_limit=120, soft_time_limit=100)
def process_jobs() -> int:
    return workloads.process_jobs()


@shared_task(name="runs.retry_failed_replicas", acks_late=True, time_limit=120, soft_time_limit=100)
def retry_failed_replicas() -> int:
    return supervisor.retry_failed_replicas()


@shared_task(name="runs.roll_out", acks_late=True, time_limit=120, soft_time_limit=100)
def roll_out() -> int:
    return rollout.roll_out()


@shared_task(name="runs.trigger_scheduled_runs", acks_late=True, time_limit=120, soft_time_limit=100)
def trigger_scheduled_runs() -> int:
    return schedules.trigger_scheduled_runs()
