"""Reads about backends, shared by API, admin and tasks."""

from django.db.models import Q

from backends.models import Backend
from fleets.models import INSTANCE_ACTIVE_STATES
from volumes.models import VolumeStatus


def named(names, prefix: str = "") -> Q:
    """Backends that configurations name: an entry of ``backends: [...]`` matches a backend's name
    or its type (dstack users write ``backends: [aws]``). ``prefix`` filters through a relation."""
    return Q(**{f"{prefix}name__in": list(names)}) | Q(**{f"{prefix}type__in": list(names)})


def backend_dependencies(backend: Backend) -> dict[str, list[str]]:
    """Names of the active instances and not-deleted volumes that keep ``backend`` in use."""
    instances = list(
        backend.instances.filter(status__in=INSTANCE_ACTIVE_STATES).order_by("name").values_list("name", flat=True)
    )
    volumes = list(
        backend.volumes.exclude(status=VolumeStatus.DELETED).order_by("name").values_list("name", flat=True)
    )
    return {"instances": instances, "volumes": volumes}
