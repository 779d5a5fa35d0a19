"""Reads about backends, shared by API, admin and tasks."""

from backends.models import Backend
from fleets.models import INSTANCE_ACTIVE_STATES
from volumes.models import VolumeStatus


def backend_dependencies(backend: Backend) -> dict[str, list[str]]:
    """Names of the active instances and not-deleted volumes that keep ``backend`` in use."""
    instances = list(
        backend.instances.filter(status__in=INSTANCE_ACTIVE_STATES).order_by("name").values_list("name", flat=True)
    )
    volumes = list(
        backend.volumes.exclude(status=VolumeStatus.DELETED).order_by("name").values_list("name", flat=True)
    )
    return {"instances": instances, "volumes": volumes}
