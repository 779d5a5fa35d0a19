from rest_framework import serializers

from projects.models import Event, Project


class ProjectSerializer(serializers.ModelSerializer):
    class Meta:
        model = Project
        fields = ["name", "created_at"]
        read_only_fields = ["created_at"]
        extra_kwargs = {"name": {"validators": []}}  # the service answers 409 for a taken name


class EventSerializer(serializers.ModelSerializer):
    class Meta:
        model = Event
        fields = ["resource_type", "resource_name", "kind", "message", "actor", "created_at"]
        read_only_fields = fields


class ApplyResultSerializer(serializers.Serializer):
    type = serializers.CharField()
    name = serializers.CharField()
    action = serializers.ChoiceField(choices=["create", "update", "replace", "unchanged"])
    dry_run = serializers.BooleanField()
    changes = serializers.DictField()
    spec = serializers.DictField()
    resource = serializers.DictField(allow_null=True)
