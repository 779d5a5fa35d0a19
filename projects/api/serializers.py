from rest_framework import serializers

from core.models import Event
from projects.models import Project


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
