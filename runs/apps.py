from django.apps import AppConfig


class RunsConfig(AppConfig):
    name = "runs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models import IntegerField, OuterRef, Q, Subquery, Sum, Value
        from django.db.models.functions import Coalesce

        from fleets.holders import register_block_holder, register_holder
        from runs.models import JOB_ACTIVE_STATES, Job

        def live_blocks():
            held = (Job.objects.filter(instance=OuterRef("pk"), status__in=JOB_ACTIVE_STATES).order_by()
                    .values("instance").annotate(total=Sum("blocks")).values("total"))
            return Coalesce(Subquery(held, output_field=IntegerField()), Value(0))

        # An instance under an unfinished job is never terminated; its jobs' blocks are its busy blocks.
        register_holder("runs.jobs", lambda: Q(jobs__status__in=JOB_ACTIVE_STATES))
        register_block_holder("runs.jobs", live_blocks)

        from volumes.signals import attachments_changed

        attachments_changed.connect(_jobs_due_now, dispatch_uid="runs.jobs_due_now")


def _jobs_due_now(sender, job_ids, **kwargs) -> None:
    """An attachment of these jobs moved on: a stopped job whose volumes are now all detached
    finishes at once; the others waiting on it are due at once (not after their rest), so a job
    starts as soon as its volumes are attached."""
    from runs.jobs import finish_detached_jobs
    from runs.models import Job, JobStatus

    finish_detached_jobs(job_ids)
    Job.objects.filter(pk__in=job_ids, status__in=(JobStatus.PROVISIONING, JobStatus.TERMINATING),
                       lease_owner="").update(lease_until=None, last_processed_at=None)
