"""Reads about runs, shared by API, admin and tasks."""

from django.db.models import Count, Q, QuerySet

from runs.models import JobStatus, Run


def runs_with_replica_counts(queryset: QuerySet[Run] | None = None) -> QuerySet[Run]:
    """Runs annotated with ``running_replicas`` (replicas with a running job) and ``ready_replicas`` (those
    whose running job is also ready, see ``runs.health``) in the same query."""
    queryset = Run.objects.all() if queryset is None else queryset
    running = Q(jobs__status=JobStatus.RUNNING)
    # An aggregate drops Meta.ordering (GROUP BY), so the order is restated for stable pagination.
    return queryset.annotate(
        running_replicas=Count("jobs__replica_num", filter=running, distinct=True),
        ready_replicas=Count("jobs__replica_num", filter=running & Q(jobs__ready=True), distinct=True),
    ).order_by("-submitted_at", "-id")
