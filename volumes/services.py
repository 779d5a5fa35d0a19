"""Writes for volumes: apply, delete, provisioning and deletion through the drivers, force detach."""

import uuid

from django.db import transaction
from django.utils import timezone

from backends.drivers.registry import get_driver
from backends.models import Backend
from backends.selectors import named
from backends.services import lock_backend, refuse_if_draining
from core.errors import Conflict, InvalidInput
from core.events import record_event
from core.kicks import kick
from core.specs import ApplyResult, spec_changes
from core.transitions import compare_and_swap
from core.unique import insert_once
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

    A live volume cannot change its configuration: that would mean moving data between clouds. A
    new volume (created or registered) on a draining backend is refused: 409 ``backend_draining``.
    """
    backend = _backend_for(project, spec["backend"])
    _check_location(backend, spec)
    with transaction.atomic():
        backend = lock_backend(backend.pk)
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
        refuse_if_draining(backend)
        if existing is not None:
            result.action = "replace"
        if dry_run:
            return result
        if existing is not None:
            existing.delete()
        # Volumes of one name on two backends take two backend locks: the unique name still decides.
        with insert_once(Volume.objects.filter(project=project, name=spec["name"]), f"volume '{spec['name']}'"):
            result.resource = Volume.objects.create(
                client_token=f"stackyard-{uuid.uuid4().hex}",
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
    never_created = (not volume.volume_id and volume.status == VolumeStatus.SUBMITTED
                     and volume.last_processed_at is None)
    if volume.external or never_created:
        compare_and_swap(Volume, pk=volume.pk, allowed_from=(volume.status,), to=VolumeStatus.DELETED)
        _event(volume, "deleted", "external volume unregistered" if volume.external else "", actor)
    else:
        # A create may be on its way to the provider: the deletion loop finds it by its client token.
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


def live_volume_names(backend: Backend) -> list[str]:
    """The volumes that keep ``backend`` in use (registered with ``backends.dependents``)."""
    return list(backend.volumes.exclude(status=VolumeStatus.DELETED).order_by("name").values_list("name", flat=True))
