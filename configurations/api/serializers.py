from rest_framework import serializers


class ApplyResultSerializer(serializers.Serializer):
    type = serializers.CharField()
    name = serializers.CharField()
    action = serializers.ChoiceField(choices=["create", "update", "replace", "unchanged"])
    dry_run = serializers.BooleanField()
    changes = serializers.DictField()
    spec = serializers.DictField()
    resource = serializers.DictField(allow_null=True)
    # Re-applying an active service: {"start": [replica], "stop": [...], "replace": [...]}; null otherwise.
    plan = serializers.DictField(allow_null=True)
