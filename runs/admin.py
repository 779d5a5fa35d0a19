"""Operator views for runs and jobs: read-only state, stop, abort and delete through the run services."""

from django.contrib import admin
from django.utils.html import format_html

from core.admin import ReadOnlyAdmin, ReadOnlyInline, run_for_each
from runs.models import Job, Run, RunHealth, RunType
from runs.selectors import runs_with_replica_counts
from runs.services import delete_run, stop_run

HEALTH_COLOURS = {RunHealth.HEALTHY: "#2e7d32", RunHealth.DEGRADED: "#ef6c00", RunHealth.DOWN: "#c62828"}

JOB_COLUMNS = ("name", "status", "instance", "blocks", "termination_reason", "status_message", "exit_status")


class JobInline(ReadOnlyInline):
    model = Job
    fields = JOB_COLUMNS
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("instance")


@admin.register(Run)
class RunAdmin(ReadOnlyAdmin):
    """Runs are read-only; "stop" and "abort" call ``stop_run``, "delete" forgets finished runs."""

    list_display = ("name", "project", "type", "status", "health_badge", "replicas_ready", "termination_reason",
                    "status_message", "user", "submitted_at")
    list_filter = ("status", "type", "project")
    list_select_related = ("project", "user")
    search_fields = ("name",)
    inlines = (JobInline,)
    actions = ("stop", "abort", "delete_runs")

    def get_queryset(self, request):
        return runs_with_replica_counts(super().get_queryset(request))

    @admin.display(description="health", ordering="health")
    def health_badge(self, run):
        if run.type != RunType.SERVICE:
            return None
        health = run.health or RunHealth.DOWN  # not derived yet: no replica has run
        return format_html('<span style="color: {}; font-weight: bold">{}</span>', HEALTH_COLOURS[health], health)

    @admin.display(description="replicas ready")
    def replicas_ready(self, run):
        if run.type != RunType.SERVICE:
            return None
        return f"{run.ready_replicas}/{run.desired_replicas}"

    def _stop(self, request, queryset, *, abort: bool):
        def stop(run, actor):
            return f"now {stop_run(run=run, abort=abort, actor=actor).status}"

        run_for_each(self, request, queryset, stop)

    @admin.action(permissions=["operate"], description="Stop selected runs")
    def stop(self, request, queryset):
        self._stop(request, queryset, abort=False)

    @admin.action(permissions=["operate"], description="Abort selected runs (force volume detach)")
    def abort(self, request, queryset):
        self._stop(request, queryset, abort=True)

    @admin.action(permissions=["operate"], description="Delete selected finished runs")
    def delete_runs(self, request, queryset):
        run_for_each(self, request, queryset, lambda run, actor: delete_run(run=run, actor=actor), done="deleted")


@admin.register(Job)
class JobAdmin(ReadOnlyAdmin):
    """Jobs are read-only: they change only through the run services and reconcilers."""

    list_display = ("name", "run", "project") + JOB_COLUMNS[1:]
    list_filter = ("status", "project")
    list_select_related = ("run", "project", "instance")
    search_fields = ("name", "run__name")
