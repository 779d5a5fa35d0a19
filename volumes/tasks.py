"""Celery tasks of the volumes app: thin wrappers that call services."""

from celery import shared_task

from volumes import attachments, provisioning


@shared_task(name="volumes.process_volumes", acks_late=True, time_limit=120, soft_time_limit=100)
def process_volumes() -> int:
    return provisioning.process_volumes()


@shared_task(name="volumes.attach_volumes", acks_late=True, time_limit=120, soft_time_limit=100)
def attach_volumes() -> int:
    return attachments.attach_volumes()


@shared_task(name="volumes.detach_volumes", acks_late=True, time_limit=120, soft_time_limit=100)
def detach_volumes() -> int:
    return attachments.detach_volumes()


@shared_task(name="volumes.enforce_stop_durations", acks_late=True, time_limit=120, soft_time_limit=100)
def enforce_stop_durations() -> int:
    return attachments.enforce_stop_durations()
