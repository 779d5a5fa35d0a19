"""Reads about fleets and instances, shared by API, admin and tasks."""

from backends.dependents import owned_by_rows
from backends.drivers.base import TAG_INSTANCE
from fleets.models import Instance, InstanceStatus


def owned_instance_ids(resources) -> set[str]:
    """The provider ids among ``resources`` (tagged VMs) that an instance row owns (registered with
    ``backends.dependents.register_owner``).

    A row that is not terminated owns its ``provider_instance_id``. One with no id yet owns the VMs
    tagged with its name: it is ``pending`` (the provisioner is creating it and records the id) or
    ``terminating`` (the terminator finds the VM by client token). A terminated row owns nothing: a
    VM still running for it is exactly the leak the orphan finder is for.
    """
    live = Instance.objects.exclude(status=InstanceStatus.TERMINATED)
    return owned_by_rows(resources, live=live, id_field="provider_instance_id",
                         in_flight=live.filter(provider_instance_id=""), name_tag=TAG_INSTANCE)


def cluster_place(fleet) -> tuple[int | None, str, str] | None:
    """Where every instance of a ``placement: cluster`` fleet goes, once its first instance chose:
    ``(backend id, region, zone)``; None for other fleets and before the choice.

    ``Fleet.cluster_zone`` holds ``"region/zone"``; the backend is that of the fleet's first instance in
    that zone (None if that backend was deleted since: then nothing fits any more).
    """
    if fleet.spec.get("placement") != "cluster" or not fleet.cluster_zone:
        return None
    region, _, zone = fleet.cluster_zone.partition("/")
    backend_id = (fleet.instances.filter(region=region, availability_zone=zone).order_by("instance_num")
                  .values_list("backend_id", flat=True).first())
    return backend_id, region, zone
