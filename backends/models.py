"""Backends: the clouds a project can use, with encrypted credentials."""

import base64
import hashlib
import json

from cryptography.fernet import Fernet
from django.conf import settings
from django.db import models


class BackendType(models.TextChoices):
    SIM = "sim", "Simulated cloud"
    AWS = "aws", "Amazon Web Services"
    LOCAL = "local", "This machine"


class BackendStatus(models.TextChoices):
    """``draining``: nothing new (instance, volume) is placed or provisioned on the backend; what is
    already there keeps running until it is terminated. ``resume`` makes it ``active`` again."""

    ACTIVE = "active"
    DRAINING = "draining"
    ERROR = "error"


def _fernet() -> Fernet:
    key = hashlib.sha256(("stackyard-credentials:" + settings.SECRET_KEY).encode()).digest()
    return Fernet(base64.urlsafe_b64encode(key))


class Backend(models.Model):
    """A cloud account of one project. Credentials are stored encrypted and never returned.

    Deletion goes through ``backends.services.delete_backend``, which refuses while the backend has
    active instances or volumes that are not deleted (the row lock makes that atomic).
    """

    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="backends")
    name = models.CharField(max_length=64)
    type = models.CharField(max_length=16, choices=BackendType.choices)
    config = models.JSONField(default=dict, blank=True)
    credentials_encrypted = models.TextField(blank=True, default="", editable=False)
    status = models.CharField(max_length=16, choices=BackendStatus.choices, default=BackendStatus.ACTIVE)
    status_message = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["project_id", "name"]
        constraints = [models.UniqueConstraint(fields=["project", "name"], name="backend_unique_name_per_project")]

    def __str__(self) -> str:
        return self.name

    @property
    def credentials(self) -> dict:
        if not self.credentials_encrypted:
            return {}
        return json.loads(_fernet().decrypt(self.credentials_encrypted.encode()))

    @credentials.setter
    def credentials(self, value: dict) -> None:
        self.credentials_encrypted = _fernet().encrypt(json.dumps(value or {}).encode()).decode() if value else ""

    @property
    def has_credentials(self) -> bool:
        return bool(self.credentials_encrypted)


class OrphanKind(models.TextChoices):
    INSTANCE = "instance"
    VOLUME = "volume"


class OrphanStatus(models.TextChoices):
    FOUND = "found"  # at the provider, owned by no row
    TERMINATED = "terminated"  # terminated (or deleted) by Stackyard
    RESOLVED = "resolved"  # no longer an orphan: a row owns it now, or it left the provider


class Orphan(models.Model):
    """A provider resource tagged as ours that no live row owns, as ``backends.orphans`` found it.

    One row per resource and backend (a constraint): ``orphan_found`` is written when the row is
    created or found again after it was resolved, never on the scans in between. ``first_seen_at``
    starts the grace before termination; ``last_seen_at`` is when a scan last saw it orphaned.
    """

    backend = models.ForeignKey(Backend, on_delete=models.CASCADE, related_name="orphans")
    kind = models.CharField(max_length=16, choices=OrphanKind.choices)
    provider_id = models.CharField(max_length=128)
    name = models.CharField(max_length=200, blank=True, default="")
    region = models.CharField(max_length=64, blank=True, default="")
    availability_zone = models.CharField(max_length=64, blank=True, default="")
    tags = models.JSONField(default=dict, blank=True)
    provider_created_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=OrphanStatus.choices, default=OrphanStatus.FOUND)
    status_message = models.TextField(blank=True, default="")
    first_seen_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    terminated_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["backend_id", "-first_seen_at", "id"]
        constraints = [models.UniqueConstraint(fields=["backend", "provider_id"], name="orphan_unique_per_backend")]
        indexes = [models.Index(fields=["backend", "status"], name="orphan_backend_status_idx")]

    def __str__(self) -> str:
        return f"{self.kind} {self.provider_id} ({self.name or 'no name'})"


from backends.sim_models import *  # noqa: E402,F401,F403  (the sim cloud's state belongs to this app)
