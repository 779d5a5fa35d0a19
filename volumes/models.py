"""Network volumes and their attachments to instances."""

from django.db import models
from django.db.models import Q

from core.leases import Leased


class VolumeStatus(models.TextChoices):
    SUBMITTED = "submitted"
    PROVISIONING = "provisioning"
    ACTIVE = "active"
    DELETING = "deleting"
    DELETED = "deleted"
    FAILED = "failed"


VOLUME_LIVE_STATES = (
    VolumeStatus.SUBMITTED,
    VolumeStatus.PROVISIONING,
    VolumeStatus.ACTIVE,
    VolumeStatus.DELETING,
    VolumeStatus.FAILED,
)


class Volume(Leased):
    """A network volume on one backend, in one region (and optionally one zone).

    ``deleted`` is only reached after the provider confirms the deletion.
    """

    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="volumes")
    name = models.CharField(max_length=64)
    backend = models.ForeignKey(
        "backends.Backend", on_delete=models.SET_NULL, null=True, blank=True, related_name="volumes"
    )
    region = models.CharField(max_length=64)
    availability_zone = models.CharField(max_length=64, blank=True, default="")
    size_gb = models.PositiveIntegerField(null=True, blank=True)
    # Delete a volume Stackyard created once nothing has used it for this long (dstack's
    # ``auto_cleanup_duration``); None: keep it until the user deletes it.
    auto_cleanup_seconds = models.PositiveIntegerField(null=True, blank=True)
    volume_id = models.CharField(max_length=128, blank=True, default="")
    client_token = models.CharField(max_length=64, blank=True, default="", editable=False)
    external = models.BooleanField(default=False)
    spec = models.JSONField(default=dict)
    status = models.CharField(max_length=16, choices=VolumeStatus.choices, default=VolumeStatus.SUBMITTED)
    status_message = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["project_id", "name"]
        constraints = [models.UniqueConstraint(fields=["project", "name"], name="volume_unique_name_per_project")]
        indexes = [models.Index(fields=["backend", "status"], name="volume_backend_status_idx"),
                   models.Index(fields=["status"], name="volume_status_idx")]  # /metrics: live volumes by status

    def __str__(self) -> str:
        return self.name


class AttachmentStatus(models.TextChoices):
    ATTACHING = "attaching"
    ATTACHED = "attached"
    DETACHING = "detaching"
    DETACHED = "detached"
    FAILED = "failed"


ATTACHMENT_LIVE_STATES = (
    AttachmentStatus.ATTACHING,
    AttachmentStatus.ATTACHED,
    AttachmentStatus.DETACHING,
    AttachmentStatus.FAILED,
)


class VolumeAttachment(Leased):
    """A volume attached (or being attached/detached) to an instance for a job.

    A volume has at most one attachment that is not ``detached`` (database constraint); a failed
    attachment stays live until a detach is confirmed, because the provider may still hold it.
    The attach and detach loops share the row's lease, so an attach call and a detach call for one
    attachment never run at once.
    """

    volume = models.ForeignKey(Volume, on_delete=models.CASCADE, related_name="attachments")
    instance = models.ForeignKey("fleets.Instance", on_delete=models.CASCADE, related_name="attachments")
    job = models.ForeignKey("runs.Job", on_delete=models.SET_NULL, null=True, blank=True, related_name="attachments")
    status = models.CharField(max_length=16, choices=AttachmentStatus.choices, default=AttachmentStatus.ATTACHING)
    force = models.BooleanField(default=False)
    device_name = models.CharField(max_length=64, blank=True, default="")
    error = models.TextField(blank=True, default="")
    # What the provider has been asked so far: a detach (and a forced one) is sent once, then polled.
    detach_sent = models.BooleanField(default=False, editable=False)
    force_sent = models.BooleanField(default=False, editable=False)
    # When the detach turns forced if it has not completed (the run's ``stop_duration``); None: never.
    force_after = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    attached_at = models.DateTimeField(null=True, blank=True)
    detach_requested_at = models.DateTimeField(null=True, blank=True)
    detached_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["volume"],
                condition=~Q(status="detached"),
                name="volume_at_most_one_live_attachment",
            )
        ]
        indexes = [models.Index(fields=["status", "last_processed_at"], name="attachment_due_idx")]

    def __str__(self) -> str:
        return f"{self.volume} on {self.instance} ({self.status})"
