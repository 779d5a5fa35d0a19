"""Runs (tasks and services) and their jobs: one job per node per replica per submission."""

from django.conf import settings
from django.db import models

from core.leases import Leased


class RunType(models.TextChoices):
    TASK = "task"
    SERVICE = "service"
    DEV_ENVIRONMENT = "dev-environment"


class RunStatus(models.TextChoices):
    PENDING = "pending"
    SUBMITTED = "submitted"
    PROVISIONING = "provisioning"
    RUNNING = "running"
    TERMINATING = "terminating"
    TERMINATED = "terminated"
    FAILED = "failed"
    DONE = "done"


RUN_FINISHED_STATES = (RunStatus.TERMINATED, RunStatus.FAILED, RunStatus.DONE)
RUN_ACTIVE_STATES = (
    RunStatus.PENDING,
    RunStatus.SUBMITTED,
    RunStatus.PROVISIONING,
    RunStatus.RUNNING,
    RunStatus.TERMINATING,
)


class RunTerminationReason(models.TextChoices):
    ALL_JOBS_DONE = "all_jobs_done"
    JOB_FAILED = "job_failed"
    RETRY_LIMIT_EXCEEDED = "retry_limit_exceeded"
    STOPPED_BY_USER = "stopped_by_user"
    ABORTED_BY_USER = "aborted_by_user"
    VOLUME_ERROR = "volume_error"
    NO_CAPACITY = "no_capacity"
    MAX_DURATION_EXCEEDED = "max_duration_exceeded"
    SERVER_ERROR = "server_error"
    INACTIVITY_DURATION_EXCEEDED = "inactivity_duration_exceeded"
    UTILIZATION_POLICY = "terminated_due_to_utilization_policy"


class RunHealth(models.TextChoices):
    """A service's health: all desired replicas ready, some, or none ("" for tasks)."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    DOWN = "down"


class Run(models.Model):
    """A submitted task or service configuration (``spec``, normalized) and where it stands."""

    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="runs")
    name = models.CharField(max_length=64)
    type = models.CharField(max_length=16, choices=RunType.choices)
    spec = models.JSONField(default=dict)
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.SUBMITTED)
    status_message = models.TextField(blank=True, default="")
    termination_reason = models.CharField(
        max_length=48, choices=RunTerminationReason.choices, blank=True, default=""
    )
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    submitted_at = models.DateTimeField(auto_now_add=True)
    terminating_since = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)
    health = models.CharField(max_length=16, choices=RunHealth.choices, blank=True, default="")
    # Bumped when a re-apply changes what the jobs run (commands, image, env, resources...): jobs of
    # an older version are replaced one replica at a time (a rolling update).
    spec_version = models.PositiveIntegerField(default=0)
    # A run with a ``schedule`` waits ``pending`` until this time, then submits its jobs (runs.schedules).
    next_triggered_at = models.DateTimeField(null=True, blank=True, db_index=True)

    class Meta:
        ordering = ["project_id", "-submitted_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["project", "name"], name="run_unique_name_per_project")]
        indexes = [models.Index(fields=["project", "status"], name="run_project_status_idx"),
                   # /metrics and the dashboard count unfinished runs (and services) without reading finished ones
                   models.Index(fields=["status", "type"], name="run_status_type_idx")]

    def __str__(self) -> str:
        return self.name

    @property
    def desired_replicas(self) -> int:
        return int(self.spec.get("replicas") or 1)


class JobStatus(models.TextChoices):
    SUBMITTED = "submitted"
    PROVISIONING = "provisioning"
    RUNNING = "running"
    TERMINATING = "terminating"
    TERMINATED = "terminated"
    ABORTED = "aborted"
    FAILED = "failed"
    DONE = "done"


JOB_FINISHED_STATES = (JobStatus.TERMINATED, JobStatus.ABORTED, JobStatus.FAILED, JobStatus.DONE)
JOB_ACTIVE_STATES = (JobStatus.SUBMITTED, JobStatus.PROVISIONING, JobStatus.RUNNING, JobStatus.TERMINATING)


class JobTerminationReason(models.TextChoices):
    DONE = "done"
    EXITED_WITH_ERROR = "exited_with_error"
    STOPPED_BY_USER = "stopped_by_user"
    ABORTED_BY_USER = "aborted_by_user"
    STOPPED_BY_SERVER = "stopped_by_server"
    NO_CAPACITY = "no_capacity"
    INTERRUPTED = "interrupted"
    MAX_DURATION_EXCEEDED = "max_duration_exceeded"
    VOLUME_ERROR = "volume_error"
    SERVER_ERROR = "server_error"
    # The replica is no longer wanted: the service was scaled down, or a rolling update replaced it.
    SCALED_DOWN = "scaled_down"
    INACTIVITY_DURATION_EXCEEDED = "inactivity_duration_exceeded"
    UTILIZATION_POLICY = "terminated_due_to_utilization_policy"


class Job(Leased):
    """One node of one replica of a run. A retry is a new row with the next ``submission_num``.

    ``blocks`` is how many blocks of ``instance`` the job holds while it is not finished.
    """

    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="jobs")
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="jobs")
    name = models.CharField(max_length=100)
    replica_num = models.PositiveIntegerField(default=0)
    # The service's replica group (``replicas: [{name, ...}]``) or the task's node group this job belongs to.
    group = models.CharField(max_length=40, blank=True, default="")
    job_num = models.PositiveIntegerField(default=0)
    submission_num = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.SUBMITTED)
    status_message = models.TextField(blank=True, default="")
    termination_reason = models.CharField(
        max_length=48, choices=JobTerminationReason.choices, blank=True, default=""
    )
    exit_status = models.IntegerField(null=True, blank=True)
    instance = models.ForeignKey(
        "fleets.Instance", on_delete=models.SET_NULL, null=True, blank=True, related_name="jobs"
    )
    blocks = models.PositiveIntegerField(default=0)
    volumes = models.JSONField(default=list, blank=True)
    workload_id = models.CharField(max_length=128, blank=True, default="")
    # When the provider confirmed the workload stopped (or saw it end): a terminating job then
    # waits only for its volumes to detach.
    workload_stopped_at = models.DateTimeField(null=True, blank=True)
    # Readiness: a running job is ready once its probes passed ``ready_after`` times in a row (at once
    # when it has none); ``probe_passes`` counts the passes in a row, a failure resets it.
    ready = models.BooleanField(default=False)
    probe_passes = models.PositiveIntegerField(default=0)
    spec_version = models.PositiveIntegerField(default=0)  # the run's ``spec_version`` this job runs
    # The GPU utilization (%) the driver last reported, and since when it has stayed below the run's
    # ``utilization_policy.min_gpu_utilization`` (runs.utilization).
    gpu_utilization = models.FloatField(null=True, blank=True)
    low_utilization_since = models.DateTimeField(null=True, blank=True)
    submitted_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["run_id", "replica_num", "job_num", "submission_num"]
        constraints = [
            models.UniqueConstraint(
                fields=["run", "replica_num", "job_num", "submission_num"], name="job_unique_submission"
            ),
        ]
        indexes = [models.Index(fields=["instance", "status"], name="job_instance_status_idx"),
                   models.Index(fields=["status", "last_processed_at"], name="job_due_idx")]

    def __str__(self) -> str:
        return self.name
