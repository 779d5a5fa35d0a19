"""Volumes through their drivers, on the one reconcile pipeline (``core.pipeline``): create (or
register) submitted volumes and delete the ones being deleted.

As with instances, a create carries the row's client token and our tags, the provider's volume id
is recorded whatever happened to the row during the call, and a volume created for a row that was
deleted meanwhile is deleted, never forgotten.
"""

import logging

from django.db import transaction
from django.db.models import Q

from backends.drivers.base import DriverError, NotFoundError, TransientError, managed_tags
from backends.drivers.registry import pass_drivers
from core.events import record_event
from core.pipeline import Reconciler, Step
from core.transitions import compare_and_swap
from volumes.models import Volume, VolumeStatus
from volumes.services import delete_unused_volumes

logger = logging.getLogger(__name__)


def _event(volume: Volume, kind: str, message: str = "") -> None:
    record_event(project=volume.project_id, resource_type="volume", resource_name=volume.name, kind=kind,
                 message=message)


def client_token(volume: Volume) -> str:
    return volume.client_token or f"stackyard-volume-{volume.pk}"


def tags(volume: Volume) -> dict[str, str]:
    return managed_tags(project=volume.project.name, volume=volume.name)


class _VolumeLoop(Reconciler):
    model = Volume

    def __init__(self):
        self.drivers = pass_drivers()

    def load(self, pks):
        return list(Volume.objects.filter(pk__in=pks).select_related("backend", "project").order_by("pk"))


class Provisioner(_VolumeLoop):
    """Submitted volumes are created (or, when external, registered) at their provider."""

    def due(self) -> Q:
        return Q(status__in=(VolumeStatus.SUBMITTED, VolumeStatus.PROVISIONING))

    def call(self, rows):
        results = {}
        for volume in rows:
            self.keep_lease()
            compare_and_swap(Volume, pk=volume.pk, allowed_from=(VolumeStatus.SUBMITTED,),
                             to=VolumeStatus.PROVISIONING)
            try:
                driver = self.drivers.get(volume.backend)
                if volume.external:
                    results[volume.pk] = driver.register_volume(volume_id=volume.volume_id, region=volume.region)
                else:
                    results[volume.pk] = driver.create_volume(
                        name=volume.name, region=volume.region, availability_zone=volume.availability_zone or None,
                        size_gb=volume.size_gb, tags=tags(volume), client_token=client_token(volume))
            except DriverError as err:
                results[volume.pk] = err
        return results

    def record(self, volume, info) -> Step:
        if isinstance(info, TransientError):
            return Step(failed=f"provider error, retrying: {info}")
        if isinstance(info, Exception):
            with transaction.atomic():
                failed = compare_and_swap(Volume, pk=volume.pk, allowed_from=(VolumeStatus.PROVISIONING,),
                                          to=VolumeStatus.FAILED, status_message=str(info))
                if failed:
                    _event(volume, "failed", str(info))
            return Step(changed=failed)
        # Kept whatever happened to the row meanwhile: a volume we cannot name is a volume we leak.
        Volume.objects.filter(pk=volume.pk, volume_id="").update(volume_id=info.volume_id)
        with transaction.atomic():
            moved = compare_and_swap(
                Volume, pk=volume.pk, allowed_from=(VolumeStatus.PROVISIONING,), to=VolumeStatus.ACTIVE,
                availability_zone=info.availability_zone or "", size_gb=info.size_gb, status_message="")
            if moved:
                _event(volume, "active", f"provider volume {info.volume_id}")
        if not moved and not volume.external:
            status = Volume.objects.filter(pk=volume.pk).values_list("status", flat=True).first()
            if status in (None, VolumeStatus.DELETED):
                self._delete_leftover(volume, info.volume_id)
        return Step(changed=moved)

    def _delete_leftover(self, volume: Volume, volume_id: str) -> None:
        try:
            self.drivers.get(volume.backend).delete_volume(volume_id=volume_id, region=volume.region)
        except DriverError as err:
            logger.warning("could not delete volume %s, created for %s after it was deleted: %s; the orphan finder "
                           "will report it", volume_id, volume.name, err)


class Deleter(_VolumeLoop):
    """Volumes being deleted are deleted at their provider; ``deleted`` only once it confirms."""

    def due(self) -> Q:
        return Q(status=VolumeStatus.DELETING)

    def call(self, rows):
        results = {}
        for volume in rows:
            self.keep_lease()
            try:
                if volume.backend is None:
                    results[volume.pk] = None
                    continue
                driver = self.drivers.get(volume.backend)
                volume_id = volume.volume_id
                if not volume_id and not volume.external:
                    found = driver.find_volume(client_token=client_token(volume))
                    volume_id = found.volume_id if found else ""
                if volume_id:
                    driver.delete_volume(volume_id=volume_id, region=volume.region)
                results[volume.pk] = None
            except NotFoundError:
                results[volume.pk] = None  # already gone at the provider
            except DriverError as err:
                results[volume.pk] = err
        return results

    def record(self, volume, result) -> Step:
        if isinstance(result, Exception):
            return Step(failed=f"deletion failed, retrying: {result}")
        with transaction.atomic():
            moved = compare_and_swap(Volume, pk=volume.pk, allowed_from=(VolumeStatus.DELETING,),
                                     to=VolumeStatus.DELETED, status_message="")
            if moved:
                _event(volume, "deleted", "confirmed by the provider")
        return Step(changed=moved)


def process_volumes() -> int:
    """One pass: provision submitted volumes, move the ones unused past their ``auto_cleanup_duration``
    to ``deleting``, then delete the ones being deleted (those just moved included)."""
    return Provisioner().run() + delete_unused_volumes() + Deleter().run()
