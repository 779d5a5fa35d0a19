"""Operator views for volumes and attachments: read-only state, delete and force detach via services."""

from django.contrib import admin
from django.db.models import OuterRef, Subquery

from core.admin import ReadOnlyAdmin, ReadOnlyInline, run_for_each
from volumes.models import ATTACHMENT_LIVE_STATES, Volume, VolumeAttachment
from volumes.services import delete_volume, request_force_detach


class AttachmentInline(ReadOnlyInline):
    model = VolumeAttachment
    fields = ("instance", "job", "status", "force", "device_name", "error", "created_at", "detached_at")
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("instance", "job")


@admin.register(Volume)
class VolumeAdmin(ReadOnlyAdmin):
    """Volumes are read-only; "delete" is refused while attached, "force detach" forces the live attachment off."""

    list_display = ("name", "project", "backend", "region", "availability_zone", "size_gb", "status",
                    "status_message", "attached_to", "external")
    list_filter = ("status", "backend", "project", "external")
    list_select_related = ("project", "backend")
    search_fields = ("name", "volume_id")
    inlines = (AttachmentInline,)
    actions = ("delete_volumes", "force_detach")

    def get_queryset(self, request):
        live = VolumeAttachment.objects.filter(volume=OuterRef("pk"), status__in=ATTACHMENT_LIVE_STATES)
        return super().get_queryset(request).annotate(attached=Subquery(live.values("instance__name")[:1]))

    @admin.display(description="attached to", ordering="attached")
    def attached_to(self, obj):
        return obj.attached or "-"

    @admin.action(permissions=["operate"], description="Delete selected volumes")
    def delete_volumes(self, request, queryset):
        def delete(volume, actor):
            return f"now {delete_volume(volume=volume, actor=actor).status}"

        run_for_each(self, request, queryset, delete)

    @admin.action(permissions=["operate"], description="Force detach selected volumes")
    def force_detach(self, request, queryset):
        def detach(volume, actor):
            attachment = request_force_detach(volume=volume, actor=actor)
            return f"force detach requested from instance {attachment.instance}"

        run_for_each(self, request, queryset, detach)


@admin.register(VolumeAttachment)
class VolumeAttachmentAdmin(ReadOnlyAdmin):
    """Attachments are read-only: they change only through attach/detach services."""

    list_display = ("volume", "instance", "job", "status", "force", "device_name", "error", "created_at")
    list_filter = ("status", "force", "volume__project")
    list_select_related = ("volume", "instance", "job")
    search_fields = ("volume__name", "instance__name", "job__name")
