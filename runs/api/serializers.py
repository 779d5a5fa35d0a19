from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.applying import redact_secrets
from runs.groups import desired_by_group
from runs.models import Job, JobTerminationReason, Run, RunHealth, RunTerminationReason, RunType
from runs.selectors import group_replica_counts


class JobSerializer(serializers.ModelSerializer):
    """A job. ``gpu_utilization``: the mean % over its GPUs at the last poll (null where the driver cannot
    tell); ``low_utilization_since``: since when it has stayed below the run's ``utilization_policy``."""

    instance = serializers.CharField(source="instance.name", read_only=True, allow_null=True, default=None)
    # Declared so that the schema lists "" (not finished) among the values, as the API answers it.
    termination_reason = serializers.ChoiceField(choices=JobTerminationReason.choices, allow_blank=True,
                                                 read_only=True)

    class Meta:
        model = Job
        fields = ["name", "replica_num", "group", "job_num", "submission_num", "status", "status_message",
                  "termination_reason", "exit_status", "instance", "blocks", "volumes", "gpu_utilization",
                  "low_utilization_since", "submitted_at", "started_at", "finished_at"]
        read_only_fields = fields


class GroupReplicasSerializer(serializers.Serializer):
    name = serializers.CharField()
    desired = serializers.IntegerField()
    running = serializers.IntegerField()
    ready = serializers.IntegerField()


class ReplicasSerializer(serializers.Serializer):
    desired = serializers.IntegerField()
    running = serializers.IntegerField()
    ready = serializers.IntegerField(help_text="running replicas whose probes passed ready_after times in a row")
    groups = GroupReplicasSerializer(many=True, required=False,
                                     help_text="per replica group, in the spec's order (only with replica groups)")


class RunListSerializer(serializers.ListSerializer):
    """A page of runs: the replica groups of all its services are counted in one query, not one a run."""

    def to_representation(self, data):
        runs = list(data.all() if hasattr(data, "all") else data)
        self.child.context["group_counts"] = group_replica_counts(
            [run.pk for run in runs if run.type == RunType.SERVICE and run.spec.get("groups")])
        return super().to_representation(runs)


class RunSerializer(serializers.ModelSerializer):
    """A run. Services also show ``replicas`` and ``health``; they are null for tasks and dev environments.

    The queryset must be annotated with ``running_replicas`` and ``ready_replicas`` (see ``runs.selectors``);
    ``health`` is the one ``runs.health`` stored, so the API, the admin, the metrics and the events agree.
    ``next_triggered_at``: when a scheduled run waiting ``pending`` submits its jobs next (null otherwise).
    """

    replicas = serializers.SerializerMethodField()
    health = serializers.SerializerMethodField()
    termination_reason = serializers.ChoiceField(choices=RunTerminationReason.choices, allow_blank=True,
                                                 read_only=True)

    class Meta:
        model = Run
        list_serializer_class = RunListSerializer
        fields = ["name", "type", "status", "status_message", "termination_reason", "replicas", "health", "spec",
                  "submitted_at", "next_triggered_at", "terminating_since", "finished_at", "updated_at"]
        read_only_fields = fields

    def to_representation(self, run: Run) -> dict:
        data = super().to_representation(run)
        data["spec"] = redact_secrets(data["spec"])
        return data

    @extend_schema_field(ReplicasSerializer(allow_null=True))
    def get_replicas(self, run: Run):
        if run.type != RunType.SERVICE:
            return None
        counts = {"desired": run.desired_replicas, "running": getattr(run, "running_replicas", 0),
                  "ready": getattr(run, "ready_replicas", 0)}
        if run.spec.get("groups"):
            counts["groups"] = _group_counts(run, self.context.get("group_counts"))
        return counts

    @extend_schema_field(serializers.ChoiceField(choices=RunHealth.choices, allow_null=True))
    def get_health(self, run: Run):
        if run.type != RunType.SERVICE:
            return None
        return run.health or RunHealth.DOWN  # not derived yet: no replica has run


def _group_counts(run: Run, counted: dict[int, dict] | None) -> list[dict]:
    """Desired, running and ready replicas of each group. ``counted``: the counts of a whole page of runs
    (``RunListSerializer``); one query for this run alone otherwise."""
    rows = (group_replica_counts([run.pk]) if counted is None else counted).get(run.pk, {})
    return [{"name": name, "desired": desired, "running": rows.get(name, {}).get("running", 0),
             "ready": rows.get(name, {}).get("ready", 0)} for name, desired in desired_by_group(run.spec).items()]


class StopSerializer(serializers.Serializer):
    abort = serializers.BooleanField(required=False, default=False)

    def validate(self, attrs):
        unknown = set(self.initial_data) - {"abort"} if isinstance(self.initial_data, dict) else set()
        if unknown:
            raise serializers.ValidationError({k: ["unknown field"] for k in sorted(unknown)})
        return attrs
