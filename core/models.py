"""The framework's own tables: the event log every state change writes to, queued kicks, pass heartbeats."""

from django.db import models


class Event(models.Model):
    """One state change of one resource. Written in the same transaction as the change."""

    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="events")
    resource_type = models.CharField(max_length=32)
    resource_name = models.CharField(max_length=128)
    kind = models.CharField(max_length=64)
    message = models.TextField(blank=True, default="")
    actor = models.CharField(max_length=150, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["project", "resource_type", "resource_name"], name="event_resource_idx"),
                   models.Index(fields=["kind"], name="event_kind_idx")]  # /metrics counts one kind per scrape
        db_table = "projects_event"  # created by the projects app before the framework had its own

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

    class Meta:
        db_table = "projects_queuedkick"

    def __str__(self) -> str:
        return f"{self.task_name} queued at {self.queued_at:%H:%M:%S}"


class PassHeartbeat(models.Model):
    """When a pass of a background task last finished, and on which worker.

    One row per task name, replaced (one upsert) each time a pass of that task succeeds, so
    ``/healthz`` can tell a worker that stopped making progress from one that is merely idle.
    """

    task_name = models.CharField(max_length=100, primary_key=True)
    finished_at = models.DateTimeField()
    worker = models.CharField(max_length=255, blank=True, default="")

    def __str__(self) -> str:
        return f"{self.task_name} finished at {self.finished_at:%H:%M:%S} on {self.worker or '?'}"
