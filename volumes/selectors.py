"""Reads about volumes, shared by API, admin and tasks."""

from backends.dependents import owned_by_rows
from backends.drivers.base import TAG_VOLUME
from volumes.models import Volume, VolumeStatus

# The states in which a volume with no provider id may still get one: being created (the provisioner
# records it) or being deleted (the deleter finds it by client token). A failed create made nothing.
IN_FLIGHT_STATES = (VolumeStatus.SUBMITTED, VolumeStatus.PROVISIONING, VolumeStatus.DELETING)


def owned_volume_ids(resources) -> set[str]:
    """The provider ids among ``resources`` (tagged volumes) that a volume row owns (registered with
    ``backends.dependents.register_owner``): a row that is not deleted owns its ``volume_id``, and
    one whose create is in flight owns the volumes tagged with its name."""
    live = Volume.objects.exclude(status=VolumeStatus.DELETED)
    in_flight = Volume.objects.filter(status__in=IN_FLIGHT_STATES, volume_id="")
    return owned_by_rows(resources, live=live, id_field="volume_id", in_flight=in_flight,
                         name_tag=TAG_VOLUME)
