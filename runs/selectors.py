"""Reads about runs, shared by API, admin and tasks."""

from django.db.models import Count, Q, QuerySet

from runs.models import Job, JobStatus, Run


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


def group_replica_counts(run_ids) -> dict[int, dict[str, dict]]:
    """``{run_id: {group: {"running", "ready"}}}``: replicas with a running (and ready) job, per replica
    group of those runs, in one query whatever their number."""
    counts: dict[int, dict[str, dict]] = {}
    rows = (Job.objects.filter(run_id__in=list(run_ids), status=JobStatus.RUNNING).values("run_id", "group")
            .annotate(running=Count("replica_num", distinct=True),
                      ready=Count("replica_num", filter=Q(ready=True), distinct=True)).order_by())
    for row in rows:
        counts.setdefault(row["run_id"], {})[row["group"]] = {"running": row["running"], "ready": row["ready"]}
    return counts
