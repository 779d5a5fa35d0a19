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
    ACTIVE = "active"
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


from backends.sim_models import *  # noqa: E402,F401,F403  (the sim cloud's state belongs to this app)
