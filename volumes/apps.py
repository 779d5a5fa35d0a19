from django.apps import AppConfig


class VolumesConfig(AppConfig):
    name = "volumes"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models import Q

        from backends.dependents import register_dependents, register_owner
        from fleets.holders import register_holder
        from volumes.models import AttachmentStatus, VolumeStatus
        from volumes.selectors import owned_volume_ids
        from volumes.services import live_volume_names

        register_dependents("volumes", live_volume_names, lambda: ~Q(volumes__status=VolumeStatus.DELETED))
        register_owner("volume", owned_volume_ids)
        # An instance is never terminated while a volume is attached to it, or being detached from
        # it, or its attach is in flight (it may land). An attach that failed without ever attaching
        # holds nothing.
        holding = (AttachmentStatus.ATTACHING, AttachmentStatus.ATTACHED, AttachmentStatus.DETACHING)
        register_holder("volumes.attachments", lambda: Q(attachments__status__in=holding)
                        | Q(attachments__status=AttachmentStatus.FAILED, attachments__attached_at__isnull=False))
