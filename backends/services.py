"""Writes for backends: create, update, delete (refused while in use), drain/resume and mass termination."""

from django.db import transaction

from backends.dependents import backend_dependencies, terminate_dependents
from backends.drivers.base import DriverError
from backends.drivers.registry import driver_class
from backends.models import Backend, BackendStatus
from core.errors import Conflict, InvalidInput, NotFound
from core.events import record_event
from core.kicks import kick
from core.transitions import compare_and_swap
from core.unique import insert_once
from projects.models import Project
from projects.services import valid_name


def _validated_config(backend_type: str, config) -> dict:
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise InvalidInput("config must be a mapping", field="config")
    return driver_class(backend_type).validate_config(config)


def _validated_credentials(backend_type: str, credentials) -> dict:
    if credentials is None:
        credentials = {}
    if not isinstance(credentials, dict):
        raise InvalidInput("credentials must be a mapping", field="credentials")
    return driver_class(backend_type).validate_credentials(credentials)


def _check_access(backend: Backend) -> None:
    """The driver's one cheap call with the backend as it would be stored: 400 if it fails, so that
    bad credentials or a bad region are never stored."""
    try:
        driver_class(backend.type)(backend).check_access()
    except DriverError as err:
        raise InvalidInput(f"the backend's provider refused access: {err}", code="access_check_failed",
                           field="credentials") from None


def create_backend(
    *, project: Project, name: str, type: str, config: dict | None = None, credentials: dict | None = None,
    actor: str = "",
) -> Backend:
    """Create a backend after its driver validated the config and proved access (that provider call
    is made before the transaction, never inside it). Names are unique per project."""
    name = valid_name(name)
    config = _validated_config(type, config)
    credentials = _validated_credentials(type, credentials)
    backend = Backend(project=project, name=name, type=type, config=config)
    backend.credentials = credentials
    if Backend.objects.filter(project=project, name=name).exists():
        raise Conflict(f"backend '{name}' already exists in project '{project.name}'", code="already_exists")
    _check_access(backend)
    with transaction.atomic():
        with insert_once(Backend.objects.filter(project=project, name=name), f"backend '{name}'"):
            backend.save()
        record_event(project=project, resource_type="backend", resource_name=name, kind="created", actor=actor)
    return backend


def update_backend(
    *, backend: Backend, config: dict | None = None, credentials: dict | None = None, actor: str = ""
) -> Backend:
    """Replace the config and/or credentials of a backend (credentials stay write-only). The new ones
    are validated and their access proved first, outside any transaction or row lock."""
    changes: dict = {}
    if config is not None:
        changes["config"] = _validated_config(backend.type, config)
    if credentials is not None:
        changes["credentials"] = _validated_credentials(backend.type, credentials)
    if not changes:
        return backend
    candidate = Backend.objects.filter(pk=backend.pk).first()
    if candidate is None:
        raise Conflict("the backend was deleted", code="backend_deleted")
    for field, value in changes.items():
        setattr(candidate, field, value)
    _check_access(candidate)
    with transaction.atomic():
        backend = lock_backend(backend.pk)
        for field, value in changes.items():
            setattr(backend, field, value)
        backend.save()
        record_event(
            project=backend.project_id, resource_type="backend", resource_name=backend.name, kind="updated",
            message="changed " + ", ".join(changes), actor=actor,
        )
    return backend


def lock_backend(backend_id: int) -> Backend:
    """Lock a backend row for the rest of the transaction.

    Every creation of an instance or a volume on a backend takes this lock first, and so does
    ``delete_backend``: the in-use check and the delete are therefore atomic with respect to new
    resources (a creator that waited on a deleted backend finds it gone and fails cleanly).
    """
    backend = Backend.objects.select_for_update().filter(pk=backend_id).first()
    if backend is None:
        raise Conflict("the backend was deleted", code="backend_deleted")
    return backend


def refuse_if_draining(backend: Backend) -> None:
    """409 ``backend_draining`` when nothing new may be created on ``backend``. Call it on the row
    ``lock_backend`` returned, so a drain and a creation cannot cross."""
    if backend.status == BackendStatus.DRAINING:
        raise Conflict(f"backend '{backend.name}' is draining: nothing new is placed or provisioned on it; "
                       f"resume it or use another backend", code="backend_draining", backend=backend.name)


def lock_backend_for_new(backend_id: int) -> Backend:
    """``lock_backend`` for the creation of a new instance or volume (409 while it is draining)."""
    backend = lock_backend(backend_id)
    refuse_if_draining(backend)
    return backend


DRAINING_MESSAGE = "draining: nothing new is placed or provisioned on it until it is resumed"


@transaction.atomic
def drain_backend(*, backend: Backend, actor: str = "") -> Backend:
    """Stop placing and provisioning anything new on the backend (idempotent).

    What is already there (instances, their jobs, volumes, instances requested before) stays; fleets
    replace capacity they lose on their other backends.
    """
    if compare_and_swap(Backend, pk=backend.pk, allowed_from=(BackendStatus.ACTIVE, BackendStatus.ERROR),
                        to=BackendStatus.DRAINING, status_message=DRAINING_MESSAGE):
        record_event(project=backend.project_id, resource_type="backend", resource_name=backend.name,
                     kind="draining", actor=actor)
    backend.refresh_from_db()
    return backend


@transaction.atomic
def resume_backend(*, backend: Backend, actor: str = "") -> Backend:
    """A draining backend takes new instances and volumes again (idempotent)."""
    if compare_and_swap(Backend, pk=backend.pk, allowed_from=(BackendStatus.DRAINING,), to=BackendStatus.ACTIVE,
                        status_message=""):
        record_event(project=backend.project_id, resource_type="backend", resource_name=backend.name,
                     kind="resumed", actor=actor)
        # Fleets and runs waiting for capacity may use it again: by name, backends sit below them.
        kick("fleets.process_fleets")
        kick("runs.place_jobs")
    backend.refresh_from_db()
    return backend


@transaction.atomic
def delete_backend(*, backend: Backend, actor: str = "") -> None:
    """Delete a backend unless it has active instances or volumes that are not deleted (409)."""
    locked = Backend.objects.select_for_update().filter(pk=backend.pk).first()
    if locked is None:
        raise NotFound(f"backend '{backend.name}' does not exist")
    dependencies = backend_dependencies(locked)
    if dependencies["instances"] or dependencies["volumes"]:
        raise Conflict(
            f"backend '{locked.name}' is in use by {len(dependencies['instances'])} active instance(s) and "
            f"{len(dependencies['volumes'])} volume(s); terminate and delete them first",
            code="backend_in_use",
            **dependencies,
        )
    record_event(project=locked.project_id, resource_type="backend", resource_name=locked.name, kind="deleted",
                 actor=actor)
    locked.delete()


def terminate_backend_instances(*, backend: Backend, actor: str = "") -> list[str]:
    """Drain the backend, then mark every active instance of it for termination; return their names.

    The drain commits first: an instance being created meanwhile holds the backend lock, so it is
    committed before the drain and is listed here; none can be created after it.
    """
    drain_backend(backend=backend, actor=actor)
    names = terminate_dependents(backend=backend, kind="instances", actor=actor)
    kick("fleets.process_fleets")  # fleets replace them on their other backends
    return names
