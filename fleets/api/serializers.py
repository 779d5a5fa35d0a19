from rest_framework import serializers

from fleets.models import Fleet, Instance


class InstanceSerializer(serializers.ModelSerializer):
    fleet = serializers.CharField(source="fleet.name", read_only=True)
    backend = serializers.CharField(source="backend.name", read_only=True, allow_null=True, default=None)
    idle_blocks = serializers.IntegerField(read_only=True)
    blocks = serializers.SerializerMethodField(help_text='Block usage in words, e.g. "6/8 busy".')

    class Meta:
        model = Instance
        fields = ["name", "fleet", "backend", "region", "availability_zone", "instance_type", "resources", "price",
                  "spot", "status", "status_message", "termination_reason", "total_blocks", "busy_blocks",
                  "idle_blocks", "blocks", "created_at", "updated_at"]
        read_only_fields = fields

    def get_blocks(self, instance: Instance) -> str:
        return f"{instance.busy_blocks}/{instance.total_blocks} busy"


class FleetSerializer(serializers.ModelSerializer):
    instances = serializers.SerializerMethodField()

    class Meta:
        model = Fleet
        fields = ["name", "status", "status_message", "spec", "cluster_zone", "placement_group", "instances",
                  "created_at", "updated_at"]
        read_only_fields = fields

    def get_instances(self, fleet: Fleet) -> list[str]:
        return [i.name for i in fleet.instances.all()]
