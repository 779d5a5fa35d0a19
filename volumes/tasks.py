"""Celery tasks of the volumes app: thin wrappers that call services."""

from celery import shared_task

from volumes import provisioning


@shared_task(name="volumes.process_volumes", acks_late=True, time_limit=120, soft_time_limit=100)
def process_volumes() -> int:
    return provisioning.process_volumes()
