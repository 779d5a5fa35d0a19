from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from runs.models import Job, JobTerminationReason, Run, RunHealth, RunTerminationReason, RunType


class JobSerializer(serializers.ModelSerializer):
    instance = serializers.CharField(source="instance.name", read_only=True, allow_null=True, default=None)
    # Declared so that the schema lists "" (not finished) among the values, as the API answers it.
    termination_reason = serializers.ChoiceField(choices=JobTerminationReason.choices, allow_blank=True,
                                                 read_only=True)

    class Meta:
        model = Job
        fields = ["name", "replica_num", "job_num", "submission_num", "status", "status_message",
                  "termination_reason", "exit_status", "instance", "blocks", "volumes", "submitted_at",
                  "started_at", "finished_at"]
        read_only_fields = fields


class ReplicasSerializer(serializers.Serializer):
    desired = serializers.IntegerField()
    running = serializers.IntegerField()
    ready = serializers.IntegerField(help_text="running replicas whose probes passed ready_after times in a row")


class RunSerializer(serializers.ModelSerializer):
    """A run. Services also show ``replicas`` and ``health``; they are null for tasks.

    The queryset must be annotated with ``running_replicas`` and ``ready_replicas`` (see ``runs.selectors``);
    ``health`` is the one ``runs.health`` stored, so the API, the admin, the metrics and the events agree.
    """

    replicas = serializers.SerializerMethodField()
    health = serializers.SerializerMethodField()
    termination_reason = serializers.ChoiceField(choices=RunTerminationReason.choices, allow_blank=True,
                                                 read_only=True)

    class Meta:
        model = Run
        fields = ["name", "type", "status", "status_message", "termination_reason", "replicas", "health", "spec",
                  "submitted_at", "terminating_since", "finished_at", "updated_at"]
        read_only_fields = fields

    @extend_schema_field(ReplicasSerializer(allow_null=True))
    def get_replicas(self, run: Run):
        if run.type != RunType.SERVICE:
            return None
        return {"desired": run.desired_replicas, "running": getattr(run, "running_replicas", 0),
                "ready": getattr(run, "ready_replicas", 0)}

    @extend_schema_field(serializers.ChoiceField(choices=RunHealth.choices, allow_null=True))
    def get_health(self, run: Run):
        if run.type != RunType.SERVICE:
            return None
        return run.health or RunHealth.DOWN  # not derived yet: no replica has run


class StopSerializer(serializers.Serializer):
    abort = serializers.BooleanField(required=False, default=False)

    def validate(self, attrs):
        unknown = set(self.initial_data) - {"abort"} if isinstance(self.initial_data, dict) else set()
        if unknown:
            raise serializers.ValidationError({k: ["unknown field"] for k in sorted(unknown)})
        return attrs
