"""Operator views for fleets and instances: read-only state, termination through the fleet services."""

from django.contrib import admin
from django.db.models import Count, Q

from core.admin import ReadOnlyAdmin, ReadOnlyInline, run_for_each
from core.errors import Conflict
from fleets.models import INSTANCE_ACTIVE_STATES, Fleet, Instance
from fleets.services import delete_fleet, request_instance_termination


@admin.display(description="blocks")
def blocks(instance: Instance) -> str:
    return f"{instance.busy_blocks}/{instance.total_blocks} busy"


class InstanceInline(ReadOnlyInline):
    model = Instance
    fields = ("name", "status", "backend", "region", "instance_type", blocks, "status_message")
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("backend")


@admin.register(Fleet)
class FleetAdmin(ReadOnlyAdmin):
    """Fleets are read-only; "delete" terminates a live fleet (instances first) or forgets a finished one."""

    list_display = ("name", "project", "status", "status_message", "active_instances", "created_at")
    list_filter = ("status", "project")
    list_select_related = ("project",)
    search_fields = ("name",)
    inlines = (InstanceInline,)
    actions = ("delete_fleets",)

    def get_queryset(self, request):
        active = Q(instances__status__in=INSTANCE_ACTIVE_STATES)
        return super().get_queryset(request).annotate(n_active=Count("instances", filter=active))

    @admin.display(description="active instances", ordering="n_active")
    def active_instances(self, obj):
        return obj.n_active

    @admin.action(permissions=["operate"], description="Delete (terminate) selected fleets")
    def delete_fleets(self, request, queryset):
        def delete(fleet, actor):
            fleet = delete_fleet(fleet=fleet, actor=actor)
            return "deleted" if fleet.pk is None else f"now {fleet.status}"

        run_for_each(self, request, queryset, delete)


@admin.register(Instance)
class InstanceAdmin(ReadOnlyAdmin):
    """Instances are read-only; "terminate" asks the termination reconciler to end them."""

    list_display = ("name", "project", "fleet", "backend", "region", "instance_type", "status", blocks,
                    "status_message", "termination_reason", "price")
    list_filter = ("status", "backend__type", "backend", "project", "region")
    list_select_related = ("project", "fleet", "backend")
    search_fields = ("name", "fleet__name", "backend__name", "provider_instance_id")
    actions = ("terminate",)

    @admin.action(permissions=["operate"], description="Terminate selected instances")
    def terminate(self, request, queryset):
        def terminate(instance, actor):
            if not request_instance_termination(instance=instance, reason="terminated_by_operator", actor=actor):
                raise Conflict(f"is {instance.status}: only pending, provisioning, idle or busy instances terminate")
            return "terminating"

        run_for_each(self, request, queryset, terminate)
