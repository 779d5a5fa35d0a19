"""Fleets and the instances they own, cut into resource blocks."""

from django.db import models
from django.db.models import F, Q

from core.leases import Leased


class FleetStatus(models.TextChoices):
    SUBMITTED = "submitted"
    ACTIVE = "active"
    TERMINATING = "terminating"
    TERMINATED = "terminated"
    FAILED = "failed"


FLEET_FINISHED_STATES = (FleetStatus.TERMINATED, FleetStatus.FAILED)


class Fleet(Leased):
    """A set of instances described by a dstack fleet configuration (``spec``, normalized)."""

    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="fleets")
    name = models.CharField(max_length=64)
    spec = models.JSONField(default=dict)
    status = models.CharField(max_length=16, choices=FleetStatus.choices, default=FleetStatus.SUBMITTED)
    # ``placement: cluster``: the zone every instance goes to, and the provider's placement group there.
    cluster_zone = models.CharField(max_length=64, blank=True, default="")
    placement_group = models.CharField(max_length=128, blank=True, default="")
    status_message = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["project_id", "name"]
        constraints = [models.UniqueConstraint(fields=["project", "name"], name="fleet_unique_name_per_project")]

    def __str__(self) -> str:
        return self.name


class InstanceStatus(models.TextChoices):
    PENDING = "pending"
    PROVISIONING = "provisioning"
    IDLE = "idle"
    BUSY = "busy"
    TERMINATING = "terminating"
    TERMINATED = "terminated"


INSTANCE_ACTIVE_STATES = (
    InstanceStatus.PENDING,
    InstanceStatus.PROVISIONING,
    InstanceStatus.IDLE,
    InstanceStatus.BUSY,
    InstanceStatus.TERMINATING,
)
INSTANCE_FINISHED_STATES = (InstanceStatus.TERMINATED,)
INSTANCE_UP_STATES = (InstanceStatus.IDLE, InstanceStatus.BUSY)
# Jobs may be assigned to an instance that is still coming up; they start once it is up.
INSTANCE_ASSIGNABLE_STATES = (InstanceStatus.PENDING, InstanceStatus.PROVISIONING, *INSTANCE_UP_STATES)


class Instance(Leased):
    """One cloud machine of a fleet.

    Guarantees (database constraints, not clamps): ``0 <= busy_blocks <= total_blocks`` and
    ``total_blocks >= 1``. ``busy_blocks`` only ever changes relatively (``F()``) in the same
    transaction as the job assignment or release that justifies it.
    """

    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="instances")
    fleet = models.ForeignKey(Fleet, on_delete=models.CASCADE, related_name="instances")
    # SET_NULL: a backend can only be deleted once all its instances are terminated (services check
    # that under a row lock); the terminated ones keep their history.
    backend = models.ForeignKey(
        "backends.Backend", on_delete=models.SET_NULL, null=True, blank=True, related_name="instances"
    )
    name = models.CharField(max_length=80)
    instance_num = models.PositiveIntegerField()
    region = models.CharField(max_length=64, blank=True, default="")
    availability_zone = models.CharField(max_length=64, blank=True, default="")
    instance_type = models.CharField(max_length=64, blank=True, default="")
    resources = models.JSONField(default=dict, blank=True)
    price = models.DecimalField(max_digits=12, decimal_places=4, default=0)
    spot = models.BooleanField(default=False)
    provider_instance_id = models.CharField(max_length=128, blank=True, default="")
    # Sent with every create call: a retried create (after a crash or a lost reply) finds the VM the
    # first call made instead of launching a second one.
    client_token = models.CharField(max_length=64, blank=True, default="", editable=False)
    status = models.CharField(max_length=16, choices=InstanceStatus.choices, default=InstanceStatus.PENDING)
    status_message = models.TextField(blank=True, default="")
    termination_reason = models.CharField(max_length=64, blank=True, default="")
    total_blocks = models.PositiveIntegerField(default=1)
    idle_since = models.DateTimeField(null=True, blank=True)
    # Seconds it may stay idle before it is retired, set when it was grown for a run whose configuration
    # gives ``idle_duration`` (dstack's per-instance termination idle time); None: the fleet's.
    idle_duration = models.PositiveIntegerField(null=True, blank=True)
    busy_blocks = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["project_id", "fleet_id", "instance_num"]
        constraints = [
            models.UniqueConstraint(fields=["project", "name"], name="instance_unique_name_per_project"),
            models.CheckConstraint(
                condition=Q(busy_blocks__gte=0) & Q(busy_blocks__lte=F("total_blocks")),
                name="instance_busy_blocks_within_total",
            ),
            models.CheckConstraint(condition=Q(total_blocks__gte=1), name="instance_total_blocks_positive"),
        ]
        indexes = [models.Index(fields=["backend", "status"], name="instance_backend_status_idx"),
                   models.Index(fields=["status", "last_processed_at"], name="instance_due_idx")]

    def __str__(self) -> str:
        return self.name

    @property
    def idle_blocks(self) -> int:
        return self.total_blocks - self.busy_blocks
