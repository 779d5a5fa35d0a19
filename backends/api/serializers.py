from rest_framework import serializers

from backends.models import Backend, BackendType


class BackendSerializer(serializers.ModelSerializer):
    """A backend; ``credentials`` can be written but is never returned (``has_credentials`` tells)."""

    type = serializers.ChoiceField(choices=BackendType.choices)
    credentials = serializers.JSONField(write_only=True, required=False)
    has_credentials = serializers.BooleanField(read_only=True)

    class Meta:
        model = Backend
        fields = ["name", "type", "config", "credentials", "has_credentials", "status", "status_message",
                  "created_at", "updated_at"]
        read_only_fields = ["status", "status_message", "created_at", "updated_at"]
        # Uniqueness is checked by the service (409), not as a field error.
        validators = []
        extra_kwargs = {"name": {"validators": []}}


class BackendUpdateSerializer(serializers.Serializer):
    config = serializers.JSONField(required=False)
    credentials = serializers.JSONField(required=False, write_only=True)

    def validate(self, attrs):
        unknown = set(self.initial_data) - set(self.fields)
        if unknown:
            raise serializers.ValidationError({k: ["cannot be changed"] for k in sorted(unknown)})
        return attrs


class FaultSerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True)
    kind = serializers.CharField(read_only=True)
    params = serializers.JSONField(read_only=True)
    created_at = serializers.DateTimeField(read_only=True)


class TerminatedInstancesSerializer(serializers.Serializer):
    instances = serializers.ListField(child=serializers.CharField())


class TaggedResourceSerializer(serializers.Serializer):
    """A provider resource tagged by this control plane; ``orphan``: no live instance or volume owns it."""

    kind = serializers.ChoiceField(choices=["instance", "volume"], read_only=True)
    provider_id = serializers.CharField(read_only=True)
    region = serializers.CharField(read_only=True)
    availability_zone = serializers.CharField(read_only=True)
    name = serializers.CharField(read_only=True)
    orphan = serializers.BooleanField(read_only=True)
    created_at = serializers.DateTimeField(read_only=True, allow_null=True)


class ProviderErrorSerializer(serializers.Serializer):
    """The provider could not be asked: ``code`` is ``provider_error``."""

    code = serializers.CharField(read_only=True)
    detail = serializers.CharField(read_only=True)
