"""Writes for volumes: apply, delete, provisioning and deletion through the drivers, force detach."""

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from backends.drivers.base import DriverError, NotFoundError, TransientError
from backends.drivers.registry import get_driver
from backends.models import Backend
from backends.selectors import named
from backends.services import lock_backend
from core import leases
from core.errors import Conflict, InvalidInput
from core.events import record_event
from core.kicks import kick
from core.specs import ApplyResult, spec_changes
from core.transitions import compare_and_swap
from projects.models import Project
from volumes.models import (
    ATTACHMENT_LIVE_STATES,
    AttachmentStatus,
    Volume,
    VolumeAttachment,
    VolumeStatus,
)


def _event(volume: Volume, kind: str, message: str = "", actor: str = "") -> None:
    record_event(project=volume.project_id, resource_type="volume", resource_name=volume.name, kind=kind,
                 message=message, actor=actor)


def _backend_for(project: Project, name: str) -> Backend:
    backend = Backend.objects.filter(named([name]), project=project).order_by("name").first()
    if backend is None:
        raise InvalidInput(f"backend: no backend named or of type '{name}' in project '{project.name}'",
                           field="backend")
    return backend


def _check_location(backend: Backend, spec: dict) -> None:
    locations = get_driver(backend).locations()
    if spec["region"] not in locations:
        raise InvalidInput(f"region: backend '{backend.name}' has no region '{spec['region']}' "
                           f"(it has {', '.join(sorted(locations))})", field="region")
    zone = spec.get("availability_zone")
    if zone and zone not in locations[spec["region"]]:
        raise InvalidInput(f"availability_zone: region '{spec['region']}' has no zone '{zone}' "
                           f"(it has {', '.join(locations[spec['region']])})", field="availability_zone")


def apply_volume(*, project: Project, spec: dict, actor: str = "", dry_run: bool = False) -> ApplyResult:
    """Create a volume (or register an external one), or replace a deleted one with the same name.

    A live volume cannot change its configuration: that would mean moving data between clouds.
    """
    backend = _backend_for(project, spec["backend"])
    _check_location(backend, spec)
    with transaction.atomic():
        lock_backend(backend.pk)
        existing = Volume.objects.select_for_update().filter(project=project, name=spec["name"]).first()
        result = ApplyResult(type="volume", name=spec["name"], action="create", spec=spec, resource=existing)
        if existing is not None and existing.status != VolumeStatus.DELETED:
            result.changes = spec_changes(existing.spec, spec)
            if result.changes:
                raise Conflict(f"volume '{existing.name}' exists with another configuration "
                               f"({', '.join(result.changes)}); delete it first", code="volume_exists",
                               changes=result.changes)
            result.action = "unchanged"
            return result
        if existing is not None:
            result.action = "replace"
        if dry_run:
            return result
        if existing is not None:
            existing.delete()
        result.resource = Volume.objects.create(
            project=project, name=spec["name"], backend=backend, region=spec["region"],
            availability_zone=spec.get("availability_zone") or "", size_gb=spec.get("size_gb"),
            volume_id=spec.get("volume_id") or "", external=bool(spec.get("volume_id")), spec=spec,
        )
        _event(result.resource, "submitted", actor=actor)
        _kick()
        return result


def _kick() -> None:
    kick("volumes.process_volumes")


@transaction.atomic
def delete_volume(*, volume: Volume, actor: str = "") -> Volume:
    """Delete a volume that nothing has attached (409 ``volume_in_use`` otherwise).

    A volume never created at the provider, or an external one (we do not own its data), is
    deleted at once; any other waits in ``deleting`` until the provider confirms.
    """
    volume = Volume.objects.select_for_update().get(pk=volume.pk)
    live = volume.attachments.filter(status__in=ATTACHMENT_LIVE_STATES).select_related("instance").first()
    if live is not None:
        raise Conflict(f"volume '{volume.name}' is attached to instance '{live.instance.name}' ({live.status})",
                       code="volume_in_use", instance=live.instance.name)
    if volume.status in (VolumeStatus.DELETING, VolumeStatus.DELETED):
        return volume
    if volume.external or not volume.volume_id:
        compare_and_swap(Volume, pk=volume.pk, allowed_from=(volume.status,), to=VolumeStatus.DELETED)
        _event(volume, "deleted", "external volume unregistered" if volume.external else "", actor)
    else:
        compare_and_swap(Volume, pk=volume.pk, allowed_from=(volume.status,), to=VolumeStatus.DELETING)
        _event(volume, "deleting", actor=actor)
        _kick()
    volume.refresh_from_db()
    return volume


@transaction.atomic
def request_force_detach(*, volume: Volume, actor: str = "") -> VolumeAttachment:
    """Force the detach of the volume's live attachment (409 ``not_attached`` if there is none)."""
    attachment = (volume.attachments.select_for_update(of=("self",)).filter(status__in=ATTACHMENT_LIVE_STATES)
                  .order_by("pk").first())
    if attachment is None:
        raise Conflict(f"volume '{volume.name}' is not attached to anything", code="not_attached")
    VolumeAttachment.objects.filter(pk=attachment.pk).update(
        status=AttachmentStatus.DETACHING, force=True, detach_requested_at=attachment.detach_requested_at
        or timezone.now(),
    )
    _event(volume, "force_detach_requested", f"from instance {attachment.instance.name}", actor)
    attachment.refresh_from_db()
    return attachment


def process_volumes(*, limit: int = 50) -> int:
    """Provision submitted volumes and delete deleting ones, through their drivers."""
    done = 0
    for pk in leases.claim(Volume, Q(status__in=(VolumeStatus.SUBMITTED, VolumeStatus.PROVISIONING)), limit=limit):
        done += _provision_claimed_volume(pk)
    for pk in leases.claim(Volume, Q(status=VolumeStatus.DELETING), limit=limit):
        done += _delete_claimed_volume(pk)
    return done


def _provision_claimed_volume(pk: int) -> int:
    volume = Volume.objects.select_related("backend").get(pk=pk)
    compare_and_swap(Volume, pk=pk, allowed_from=(VolumeStatus.SUBMITTED,), to=VolumeStatus.PROVISIONING)
    try:
        driver = get_driver(volume.backend)
        if volume.external:
            info = driver.register_volume(volume_id=volume.volume_id)
        else:
            info = driver.create_volume(name=volume.name, region=volume.region,
                                        availability_zone=volume.availability_zone or None, size_gb=volume.size_gb)
    except TransientError as err:
        Volume.objects.filter(pk=pk).update(status_message=f"provider error, retrying: {err}", lease_until=None)
        return 0
    except DriverError as err:
        with transaction.atomic():
            if compare_and_swap(Volume, pk=pk, allowed_from=(VolumeStatus.PROVISIONING,), to=VolumeStatus.FAILED,
                                status_message=str(err), lease_until=None):
                _event(volume, "failed", str(err))
        return 0
    with transaction.atomic():
        moved = compare_and_swap(
            Volume, pk=pk, allowed_from=(VolumeStatus.PROVISIONING,), to=VolumeStatus.ACTIVE,
            volume_id=info.volume_id, availability_zone=info.availability_zone or "", size_gb=info.size_gb,
            status_message="", lease_until=None,
        )
        if moved:
            _event(volume, "active", f"provider volume {info.volume_id}")
    return int(moved)


def _delete_claimed_volume(pk: int) -> int:
    volume = Volume.objects.select_related("backend").get(pk=pk)
    try:
        if volume.backend is not None:
            get_driver(volume.backend).delete_volume(volume_id=volume.volume_id)
    except NotFoundError:
        pass  # already gone at the provider
    except DriverError as err:
        Volume.objects.filter(pk=pk).update(status_message=f"deletion failed, retrying: {err}", lease_until=None)
        return 0
    with transaction.atomic():
        moved = compare_and_swap(Volume, pk=pk, allowed_from=(VolumeStatus.DELETING,), to=VolumeStatus.DELETED,
                                 status_message="", lease_until=None)
        if moved:
            _event(volume, "deleted", "confirmed by the provider")
    return int(moved)
