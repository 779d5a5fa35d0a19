"""Celery tasks of the fleets app: thin wrappers that call services."""

from celery import shared_task

from fleets import blocks, instances, provisioning


@shared_task(name="fleets.process_fleets", acks_late=True, time_limit=120, soft_time_limit=100)
def process_fleets() -> int:
    return provisioning.reconcile_fleets()


@shared_task(name="fleets.process_instances", acks_late=True, time_limit=120, soft_time_limit=100)
def process_instances() -> int:
    return instances.process_instances()


@shared_task(name="fleets.terminate_instances", acks_late=True, time_limit=120, soft_time_limit=100)
def terminate_instances() -> int:
    return instances.process_terminating_instances()


@shared_task(name="fleets.verify_block_counts", acks_late=True, time_limit=300, soft_time_limit=280)
def verify_block_counts() -> int:
    return len(blocks.verify_block_counts())
