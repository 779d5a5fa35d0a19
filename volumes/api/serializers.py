from rest_framework import serializers

from volumes.models import Volume, VolumeAttachment


class AttachmentSerializer(serializers.ModelSerializer):
    instance = serializers.CharField(source="instance.name", read_only=True)
    job = serializers.CharField(source="job.name", read_only=True, allow_null=True, default=None)

    class Meta:
        model = VolumeAttachment
        fields = ["instance", "job", "status", "force", "device_name", "error", "created_at", "attached_at",
                  "detach_requested_at", "detached_at"]
        read_only_fields = fields


class VolumeSerializer(serializers.ModelSerializer):
    backend = serializers.CharField(source="backend.name", read_only=True, allow_null=True, default=None)
    attachments = AttachmentSerializer(many=True, read_only=True)

    class Meta:
        model = Volume
        fields = ["name", "backend", "region", "availability_zone", "size_gb", "volume_id", "external",
                  "auto_cleanup_seconds", "status", "status_message", "attachments", "created_at", "updated_at"]
        read_only_fields = fields
