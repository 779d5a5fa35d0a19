"""Celery tasks of the backends app: thin wrappers that call services."""

from celery import shared_task

from backends import orphans


@shared_task(name="backends.find_orphans", acks_late=True, time_limit=300, soft_time_limit=280)
def find_orphans() -> int:
    return orphans.find_orphans()
