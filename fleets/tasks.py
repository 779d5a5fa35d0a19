"""Celery tasks of the fleets app: thin wrappers that call services."""

from celery import shared_task

from fleets import services


@shared_task(name="fleets.terminate_instances", acks_late=True, time_limit=120, soft_time_limit=100)
def terminate_instances() -> int:
    return services.process_terminating_instances()
