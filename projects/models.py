"""Projects, their members and the event log every state change writes to."""

from django.conf import settings
from django.db import models


class Project(models.Model):
    """The tenant boundary: every resource belongs to exactly one project."""

    name = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Role(models.TextChoices):
    ADMIN = "admin"
    USER = "user"


class Membership(models.Model):
    """A user's role in a project. Non-members see nothing of the project (404)."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.USER)

    class Meta:
        ordering = ["project_id", "user_id"]
        constraints = [models.UniqueConstraint(fields=["project", "user"], name="membership_unique_user")]

    def __str__(self) -> str:
        return f"{self.user} in {self.project} ({self.role})"


class Event(models.Model):
    """One state change of one resource. Written in the same transaction as the change."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="events")
    resource_type = models.CharField(max_length=32)
    resource_name = models.CharField(max_length=128)
    kind = models.CharField(max_length=64)
    message = models.TextField(blank=True, default="")
    actor = models.CharField(max_length=150, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["project", "resource_type", "resource_name"], name="event_resource_idx")]

    def __str__(self) -> str:
        return f"{self.resource_type}/{self.resource_name}: {self.kind}"


class QueuedKick(models.Model):
    """A reconciler pass that was enqueued and has not started yet.

    Commits that need the same reconciler while a pass is still queued do not enqueue another:
    that pass starts after their commit and sees their work. The row is removed when the pass
    starts; a row older than ``KICK_STALE_SECONDS`` (a lost message) no longer holds kicks back.
    """

    task_name = models.CharField(max_length=100, primary_key=True)
    queued_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.task_name} queued at {self.queued_at:%H:%M:%S}"
