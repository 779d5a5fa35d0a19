"""Writes for volumes: apply, delete, provisioning and deletion through the drivers, force detach."""

import uuid
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Exists, Max, OuterRef, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from backends.drivers.registry import get_driver
from backends.models import Backend
from backends.selectors import named
from backends.services import lock_backend, refuse_if_draining
from core.applying import ApplyResult, spec_changes
from core.errors import Conflict, InvalidInput
from core.events import record_event
from core.kicks import kick
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

# The only configuration a live volume may change: everything else would move its data.
UPDATABLE_VOLUME_FIELDS = ("auto_cleanup_seconds",)


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

    A live volume cannot change its configuration (that would mean moving data between clouds),
    except ``auto_cleanup_seconds``, which is updated in place (action ``update``). A new volume
    (created or registered) on a draining backend is refused: 409 ``backend_draining``.
    """
    backend = _backend_for(project, spec["backend"])
    _check_location(backend, spec)
    with transaction.atomic():
        backend = lock_backend(backend.pk)
        existing = Volume.objects.select_for_update().filter(project=project, name=spec["name"]).first()
        result = ApplyResult(type="volume", name=spec["name"], action="create", spec=spec, resource=existing)
        if existing is not None and existing.status != VolumeStatus.DELETED:
            result.changes = spec_changes(existing.spec, spec)
            fixed = [field for field in result.changes if field not in UPDATABLE_VOLUME_FIELDS]
            if fixed:
                raise Conflict(f"volume '{existing.name}' exists with another configuration "
                               f"({', '.join(fixed)}); delete it first", code="volume_exists",
                               changes=result.changes)
            result.action = "update" if result.changes else "unchanged"
            if result.changes and not dry_run:
                _update_volume(existing, spec, actor)
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
                auto_cleanup_seconds=spec.get("auto_cleanup_seconds"),
            )
        _event(result.resource, "submitted", actor=actor)
        _kick()
        return result


def _update_volume(volume: Volume, spec: dict, actor: str) -> None:
    """Store a new ``auto_cleanup_seconds`` of a live volume (the caller holds its row lock).

    ``updated_at`` is left alone: it is when a never-attached volume became unused, and changing
    the cleanup delay does not use the volume.
    """
    old, new = volume.auto_cleanup_seconds, spec.get("auto_cleanup_seconds")
    Volume.objects.filter(pk=volume.pk).update(spec=spec, auto_cleanup_seconds=new)
    volume.refresh_from_db()
    _event(volume, "spec_updated", f"auto_cleanup_duration: {_duration_text(old)} -> {_duration_text(new)}", actor)


def _duration_text(seconds: int | None) -> str:
    """'off', or a duration as the largest whole units: 90 -> 1m30s, 7200 -> 2h."""
    if seconds is None:
        return "off"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts)


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
    """Force the detach of the volume's live attachment (409 ``not_attached`` if there is none).

    The job using it, if any, keeps running without it: this is the operator's last resort for a
    detach the provider will not complete."""
    attachment = (volume.attachments.select_for_update(of=("self",)).filter(status__in=ATTACHMENT_LIVE_STATES)
                  .order_by("pk").first())
    if attachment is None:
        raise Conflict(f"volume '{volume.name}' is not attached to anything", code="not_attached")
    request_detach(VolumeAttachment.objects.filter(pk=attachment.pk), force=True, actor=actor,
                   why="force detach requested")
    attachment.refresh_from_db()
    return attachment


def reserve_volumes(*, job_id: int, instance_id: int, choices: list[tuple[str, Volume]]) -> bool:
    """Give a job being placed its chosen volumes: one ``attaching`` attachment each, in the caller's
    transaction. False, with nothing written, if any of them is no longer usable (deleted, or taken
    by another job: the volumes are locked first, and the one-live-attachment constraint decides)."""
    pks = sorted(volume.pk for _, volume in choices)
    locked = set(Volume.objects.select_for_update().filter(pk__in=pks, status=VolumeStatus.ACTIVE)
                 .order_by("pk").values_list("pk", flat=True))
    if locked != set(pks) or VolumeAttachment.objects.filter(volume_id__in=pks,
                                                             status__in=ATTACHMENT_LIVE_STATES).exists():
        return False
    VolumeAttachment.objects.bulk_create(
        VolumeAttachment(volume_id=volume.pk, instance_id=instance_id, job_id=job_id) for _, volume in choices)
    kick("volumes.attach_volumes")
    return True


# The states a detach can be requested from (``detaching`` ones can still be forced).
DETACHABLE_STATES = (AttachmentStatus.ATTACHING, AttachmentStatus.ATTACHED, AttachmentStatus.FAILED)


def request_detach(attachments, *, force: bool, force_after=None, actor: str = "", why: str = "") -> int:
    """Ask for the detach of ``attachments`` (a queryset), forced or not, in the caller's transaction;
    a detach already under way is escalated when ``force``. Returns how many attachments changed.

    The row's lease is left alone: an attach call in flight finishes first, and its outcome is kept.
    An attachment whose instance never existed at the provider is detached at once."""
    now = timezone.now()
    changed = 0
    with transaction.atomic(savepoint=False):
        rows = list(attachments.select_for_update(of=("self",)).filter(
            Q(status__in=DETACHABLE_STATES) | Q(status=AttachmentStatus.DETACHING, force=False) if force
            else Q(status__in=DETACHABLE_STATES)).select_related("volume", "instance").order_by("pk"))
        for attachment in rows:
            never_there = (attachment.status in (AttachmentStatus.ATTACHING, AttachmentStatus.FAILED)
                           and attachment.attached_at is None and not attachment.instance.provider_instance_id)
            if never_there:
                VolumeAttachment.objects.filter(pk=attachment.pk).update(
                    status=AttachmentStatus.DETACHED, detach_requested_at=now, detached_at=now)
                _event(attachment.volume, "detached", f"from instance {attachment.instance.name}, which never "
                       "came up", actor)
            elif attachment.status == AttachmentStatus.DETACHING:
                VolumeAttachment.objects.filter(pk=attachment.pk).update(force=True, last_processed_at=None)
                _event(attachment.volume, "force_detach", _detach_message(attachment, why), actor)
            else:
                VolumeAttachment.objects.filter(pk=attachment.pk).update(
                    status=AttachmentStatus.DETACHING, force=force, force_after=force_after,
                    detach_requested_at=now, last_processed_at=None)
                kind = "force_detach" if force else "detach_requested"
                _event(attachment.volume, kind, _detach_message(attachment, why), actor)
            changed += 1
    if changed:
        kick("volumes.detach_volumes")
    return changed


def _detach_message(attachment: VolumeAttachment, why: str) -> str:
    return f"from instance {attachment.instance.name}" + (f": {why}" if why else "")


def set_force_deadline(attachments, *, force_after) -> int:
    """Give detaches under way without a deadline one (a run started terminating after them)."""
    return attachments.filter(status=AttachmentStatus.DETACHING, force=False, force_after__isnull=True).update(
        force_after=force_after)


def delete_unused_volumes() -> int:
    """Move to ``deleting`` every volume unused for longer than its ``auto_cleanup_seconds`` (dstack's
    ``auto_cleanup_duration``); the deletion loop then deletes it at the provider. Returns how many moved.

    Unused since its latest detach, or, never attached, since it last changed (became ``active``).
    Only ``active`` volumes Stackyard created: an external volume's data is not ours to delete.
    Safe with many workers and against a placement attaching the volume meanwhile: each move is
    one guarded UPDATE that re-checks in SQL that nothing holds or has used the volume since the
    cutoff; a loser of the race changes no row and writes no event.
    """
    now = timezone.now()
    live = VolumeAttachment.objects.filter(volume=OuterRef("pk"), status__in=ATTACHMENT_LIVE_STATES)
    candidates = (Volume.objects.filter(status=VolumeStatus.ACTIVE, external=False, auto_cleanup_seconds__isnull=False)
                  .filter(~Exists(live))
                  .annotate(last_used=Max(Coalesce("attachments__detached_at", "attachments__created_at")))
                  .order_by("pk"))
    moved = 0
    for volume in candidates:
        idle = now - (volume.last_used or volume.updated_at)
        if idle >= timedelta(seconds=volume.auto_cleanup_seconds):
            moved += _delete_unused(volume, now, idle)
    return moved


def _delete_unused(volume: Volume, now: datetime, idle: timedelta) -> int:
    cutoff = now - timedelta(seconds=volume.auto_cleanup_seconds)
    attachments = VolumeAttachment.objects.filter(volume=OuterRef("pk"))
    used_since = attachments.filter(Q(status__in=ATTACHMENT_LIVE_STATES) | Q(detached_at__gt=cutoff)
                                    | Q(detached_at__isnull=True, created_at__gt=cutoff))
    with transaction.atomic():
        # Take the row first (``reserve_volumes`` locks it too; skip it if held): on PostgreSQL an
        # UPDATE that waited for a lock keeps its old snapshot and would miss the attachment the
        # holder just committed, while a statement started after the lock sees it.
        if not list(Volume.objects.select_for_update(skip_locked=True).filter(pk=volume.pk).values_list("pk")):
            return 0
        moved = (Volume.objects.filter(pk=volume.pk, status=VolumeStatus.ACTIVE, external=False,
                                       auto_cleanup_seconds=volume.auto_cleanup_seconds)
                 .filter(~Exists(used_since), Q(Exists(attachments)) | Q(updated_at__lte=cutoff))
                 .update(status=VolumeStatus.DELETING, status_message="", updated_at=now))
        if moved:
            _event(volume, "auto_cleanup", f"unused for {_duration_text(int(idle.total_seconds()))} "
                   f"(auto_cleanup_duration {_duration_text(volume.auto_cleanup_seconds)}): deleting it")
    return moved


def live_volume_names(backend: Backend) -> list[str]:
    """The volumes that keep ``backend`` in use (registered with ``backends.dependents``)."""
    return list(backend.volumes.exclude(status=VolumeStatus.DELETED).order_by("name").values_list("name", flat=True))
