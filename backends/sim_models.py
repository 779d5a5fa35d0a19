"""State of the simulated cloud behind ``sim`` backends, kept in the database (like kwok or moto).

These rows are the "provider side": what a real cloud would know about instances, volumes and the
workloads on them, plus the faults an operator injected. Only the sim driver (``backends.drivers.sim``
and ``sim_volumes``) writes them; the control plane sees them through the driver interface, never
directly. They are imported into
``backends.models`` so they belong to the ``backends`` app.
"""

from django.db import models

__all__ = [
    "SimFault",
    "SimFaultKind",
    "SimInstance",
    "SimInstanceState",
    "SimJob",
    "SimJobState",
    "SimPlacementGroup",
    "SimVolume",
    "SimVolumeState",
]


class SimInstanceState(models.TextChoices):
    PROVISIONING = "provisioning"
    RUNNING = "running"
    TERMINATED = "terminated"
    INTERRUPTED = "interrupted"


class SimVolumeState(models.TextChoices):
    AVAILABLE = "available"
    IN_USE = "in-use"
    DELETED = "deleted"


class SimJobState(models.TextChoices):
    RUNNING = "running"
    STOPPED = "stopped"
    DONE = "done"
    FAILED = "failed"


class SimFaultKind(models.TextChoices):
    STUCK_DETACH = "stuck_detach"
    NO_CAPACITY = "no_capacity"
    CRASH_JOB = "crash_job"
    INTERRUPT_INSTANCE = "interrupt_instance"
    API_ERRORS = "api_errors"
    ORPHAN_INSTANCE = "orphan_instance"
    SLOW_DETACH = "slow_detach"
    STUCK_ATTACH = "stuck_attach"
    FAIL_VOLUME_CREATE = "fail_volume_create"
    PROBE_FAIL = "probe_fail"
    GPU_UTILIZATION = "gpu_utilization"
    INACTIVE = "inactive"


class SimInstance(models.Model):
    """A simulated VM. ``name`` is the control plane's instance name (faults match on it).

    ``ended_at`` is when it was terminated or interrupted, so a job that finished before that
    moment still reports ``done``.
    """

    backend = models.ForeignKey("backends.Backend", on_delete=models.CASCADE, related_name="sim_instances")
    instance_id = models.CharField(max_length=64, unique=True)
    client_token = models.CharField(max_length=64, blank=True, default="")
    tags = models.JSONField(default=dict, blank=True)
    name = models.CharField(max_length=200)
    region = models.CharField(max_length=64)
    availability_zone = models.CharField(max_length=64)
    instance_type = models.CharField(max_length=64)
    spot = models.BooleanField(default=False)
    price = models.FloatField(default=0)
    state = models.CharField(max_length=16, choices=SimInstanceState.choices, default=SimInstanceState.PROVISIONING)
    # The cluster placement group it was launched into ("" for none), as EC2 reports ``Placement.GroupName``.
    placement_group = models.CharField(max_length=128, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("id",)
        constraints = [models.UniqueConstraint(fields=["backend", "client_token"], condition=~models.Q(client_token=""),
                                               name="sim_instance_unique_client_token")]

    def __str__(self) -> str:
        return f"{self.instance_id} ({self.name}, {self.state})"


class SimPlacementGroup(models.Model):
    """A simulated cluster placement group (EC2's ``Strategy=cluster``): its instances share one zone.

    ``deleted_at`` is set when it is deleted; a name is unique among the groups not deleted.
    """

    backend = models.ForeignKey("backends.Backend", on_delete=models.CASCADE, related_name="sim_placement_groups")
    name = models.CharField(max_length=128)
    region = models.CharField(max_length=64)
    strategy = models.CharField(max_length=16, default="cluster")
    created_at = models.DateTimeField(auto_now_add=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("id",)
        constraints = [models.UniqueConstraint(fields=["backend", "name"], condition=models.Q(deleted_at__isnull=True),
                                               name="sim_placement_group_unique_live_name")]

    def __str__(self) -> str:
        return f"{self.name} ({self.region}, {'deleted' if self.deleted_at else 'live'})"


class SimVolume(models.Model):
    """A simulated network volume, attached to at most one instance (``attached_instance_id``).

    A detach is a request (``detach_requested``, ``detach_forced``) that completes when the driver
    is next asked ``is_volume_detached`` and no ``stuck_detach`` fault holds it.
    """

    backend = models.ForeignKey("backends.Backend", on_delete=models.CASCADE, related_name="sim_volumes")
    volume_id = models.CharField(max_length=64, unique=True)
    client_token = models.CharField(max_length=64, blank=True, default="")
    tags = models.JSONField(default=dict, blank=True)
    name = models.CharField(max_length=200)
    region = models.CharField(max_length=64)
    availability_zone = models.CharField(max_length=64)
    size_gb = models.PositiveIntegerField()
    state = models.CharField(max_length=16, choices=SimVolumeState.choices, default=SimVolumeState.AVAILABLE)
    attached_instance_id = models.CharField(max_length=64, blank=True, default="")
    device_name = models.CharField(max_length=32, blank=True, default="")
    detach_requested = models.BooleanField(default=False)
    detach_forced = models.BooleanField(default=False)
    # How many times ``is_volume_detached`` has been asked since the detach was requested.
    detach_polls = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("id",)
        constraints = [models.UniqueConstraint(fields=["backend", "client_token"], condition=~models.Q(client_token=""),
                                               name="sim_volume_unique_client_token")]

    def __str__(self) -> str:
        return f"{self.volume_id} ({self.name}, {self.state})"


class SimJob(models.Model):
    """A simulated workload on a simulated instance.

    ``finishes_at`` and ``exit_status`` are planned at start from the commands (``sleep N``,
    ``exit K``); a job with no ``finishes_at`` runs until stopped. ``state`` records what a poll or
    stop observed; once it leaves ``running`` it never changes again.
    """

    backend = models.ForeignKey("backends.Backend", on_delete=models.CASCADE, related_name="sim_jobs")
    workload_id = models.CharField(max_length=64, unique=True)
    client_token = models.CharField(max_length=64, blank=True, default="", db_index=True)
    job_name = models.CharField(max_length=200)
    instance_id = models.CharField(max_length=64, db_index=True)
    commands = models.JSONField(default=list)
    env = models.JSONField(default=dict)
    # The image and the rest of the workload's description (python, ports, files, repos...; JobLaunch).
    image = models.CharField(max_length=255, blank=True, default="")
    workload = models.JSONField(default=dict, blank=True)
    # What the workload mounts: [{"path", "volume_id", "device_name"} | {"path", "instance_path"}].
    mounts = models.JSONField(default=list)
    # The service's readiness probes; they pass unless a ``probe_fail`` fault names the job.
    probes = models.JSONField(default=list)
    # Why a failed workload failed (``backends.drivers.base.JobFailure``), "" otherwise.
    failure = models.CharField(max_length=16, blank=True, default="")
    state = models.CharField(max_length=16, choices=SimJobState.choices, default=SimJobState.RUNNING)
    started_at = models.DateTimeField()
    finishes_at = models.DateTimeField(null=True, blank=True)
    exit_status = models.IntegerField(null=True, blank=True)
    message = models.TextField(blank=True, default="")
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("id",)

    def __str__(self) -> str:
        return f"{self.workload_id} ({self.job_name}, {self.state})"


class SimFault(models.Model):
    """A fault injected into one sim backend; it applies from creation until cleared.

    ``params`` holds the fault's keys other than ``kind``, validated by
    ``backends.drivers.sim.validate_fault``.
    """

    backend = models.ForeignKey("backends.Backend", on_delete=models.CASCADE, related_name="sim_faults")
    kind = models.CharField(max_length=32, choices=SimFaultKind.choices)
    params = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("id",)

    def __str__(self) -> str:
        return f"{self.kind} {self.params}"

    def as_payload(self) -> dict:
        """The fault as the API shows and accepts it: ``{"kind": ..., **params}``."""
        return {"kind": self.kind, **self.params}
