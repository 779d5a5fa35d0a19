"""Volumes of the ``sim`` driver: the ``SimVolumes`` mixin that ``SimDriver`` inherits.

Guarantees beyond the ``Driver`` interface (the rest of the sim's are in ``backends.drivers.sim``):

* A detach is a request; it completes when ``is_volume_detached`` is next asked and no
  ``stuck_detach`` or ``slow_detach`` fault holds it.
* Volume calls given a ``region`` see only that region's volumes (``NotFoundError`` for others, as a
  regional API would); ``attach_volume`` refuses a volume outside the given region or zone with
  ``FatalError``.
* Devices are handed out in order from ``DEVICE_NAMES``; re-attaching a volume to the instance it is
  attached to answers its device (a retried call).
* Volume faults: ``stuck_detach`` (an unforced detach never completes; a forced one completes if
  ``forced_ok``, else it raises ``FatalError`` and changes nothing), ``slow_detach``
  (``is_volume_detached`` answers False ``polls`` times after the request, counted in
  ``SimVolume.detach_polls``), ``stuck_attach`` (``TransientError``, nothing attached) and
  ``fail_volume_create`` (``FatalError``; a create retried with a token that already made a volume
  still answers it).
* Each write is one autocommit statement, a compare-and-swap where two callers could race.
"""

from __future__ import annotations

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from backends.drivers.base import FatalError, NotFoundError, TransientError, VolumeInfo
from backends.drivers.sim_calls import _new_id, _sim_call
from backends.sim_models import SimFaultKind, SimInstance, SimInstanceState, SimVolume, SimVolumeState

# AWS recommends /dev/sdf../dev/sdp for data volumes; the sim hands them out in order.
DEVICE_NAMES = [f"/dev/sd{letter}" for letter in "fghijklmnop"]


class SimVolumes:
    """The volume calls of ``SimDriver``; see the module docstring for the simulated behaviour.

    A mixin, not a driver: it relies on the ``SimDriver`` it is mixed into for ``backend``,
    ``locations``, ``_enter_call`` (through ``_sim_call``), ``_faults``, ``_instance`` and
    ``_interrupt_if_faulted``.
    """

    def _volume(self, volume_id: str, *, include_deleted: bool = False, region: str = "") -> SimVolume:
        """The volume as a (regional, when ``region`` is given) API sees it, else ``NotFoundError``."""
        volumes = SimVolume.objects.filter(backend_id=self.backend.pk, volume_id=volume_id)
        if not include_deleted:
            volumes = volumes.exclude(state=SimVolumeState.DELETED)
        if region:
            volumes = volumes.filter(region=region)
        volume = volumes.first()
        if volume is None:
            raise NotFoundError(f"volume {volume_id!r} not found" + (f" in {region}" if region else ""))
        return volume

    @staticmethod
    def _info(volume: SimVolume) -> VolumeInfo:
        return VolumeInfo(volume.volume_id, volume.region, volume.availability_zone, volume.size_gb, volume.state)

    @staticmethod
    def _detached_fields() -> dict:
        return {
            "state": SimVolumeState.AVAILABLE,
            "attached_instance_id": "",
            "device_name": "",
            "detach_requested": False,
            "detach_forced": False,
            "detach_polls": 0,
        }

    @_sim_call
    def create_volume(self, *, name: str, region: str, availability_zone: str | None, size_gb: int,
                      tags: dict[str, str] | None = None, client_token: str = "") -> VolumeInfo:
        if client_token and (existing := self._volume_by_token(client_token)) is not None:
            return self._info(existing)
        zones = self.locations()
        if region not in zones:
            raise FatalError(f"region {region!r} is not one of this backend's regions: {', '.join(zones)}")
        zone = availability_zone or zones[region][0]
        if zone not in zones[region]:
            raise FatalError(f"zone {zone!r} is not in region {region!r} (zones: {', '.join(zones[region])})")
        if not isinstance(size_gb, int) or isinstance(size_gb, bool) or size_gb <= 0:
            raise FatalError(f"volume size must be a positive number of GB, not {size_gb!r}")
        if any(f.get("volume", name) == name for f in self._faults(SimFaultKind.FAIL_VOLUME_CREATE)):
            raise FatalError(f"volume {name!r} could not be created (fail_volume_create fault)")
        try:
            with transaction.atomic():
                volume = SimVolume.objects.create(
                    backend_id=self.backend.pk, volume_id=_new_id("vol"), client_token=client_token,
                    tags=dict(tags or {}), name=name, region=region, availability_zone=zone, size_gb=size_gb,
                )
        except IntegrityError:  # a concurrent create with the same token won: its volume is ours
            return self._info(self._volume_by_token(client_token))
        return self._info(volume)

    def _volume_by_token(self, client_token: str) -> SimVolume | None:
        return SimVolume.objects.filter(backend_id=self.backend.pk, client_token=client_token).first()

    @_sim_call
    def find_volume(self, *, client_token: str) -> VolumeInfo | None:
        volume = self._volume_by_token(client_token) if client_token else None
        return None if volume is None else self._info(volume)

    @_sim_call
    def register_volume(self, *, volume_id: str, region: str = "") -> VolumeInfo:
        return self._info(self._volume(volume_id, region=region))

    @_sim_call
    def delete_volume(self, *, volume_id: str, region: str = "") -> None:
        volume = self._volume(volume_id, include_deleted=True, region=region)
        if volume.state == SimVolumeState.DELETED:
            return
        deleted = SimVolume.objects.filter(pk=volume.pk, attached_instance_id="").update(
            state=SimVolumeState.DELETED, deleted_at=timezone.now()
        )
        if not deleted:
            volume.refresh_from_db()
            raise FatalError(f"volume {volume_id!r} is attached to {volume.attached_instance_id}; detach it first")

    @_sim_call
    def attach_volume(self, *, volume_id: str, instance_id: str, region: str = "",
                      availability_zone: str = "") -> str:
        volume = self._volume(volume_id)
        zone = volume.availability_zone
        if (region and region != volume.region) or (availability_zone and availability_zone != zone):
            raise FatalError(f"volume {volume_id} is in {volume.availability_zone} ({volume.region}), "
                             f"not in {availability_zone or region}")
        instance = self._instance(instance_id)
        self._check_attachable(volume, instance)
        if volume.attached_instance_id == instance_id:  # a retried call (_check_attachable vetted it)
            return volume.device_name
        if any(f["volume"] == volume.name for f in self._faults(SimFaultKind.STUCK_ATTACH)):
            raise TransientError(f"volume {volume_id} is still attaching (stuck_attach fault)")
        device = self._free_device(instance_id)
        attached = SimVolume.objects.filter(
            pk=volume.pk, state=SimVolumeState.AVAILABLE, attached_instance_id=""
        ).update(state=SimVolumeState.IN_USE, attached_instance_id=instance_id, device_name=device, detach_polls=0)
        if attached:
            return device
        # Someone attached it between our read and our write: the same answer as a fresh call.
        volume.refresh_from_db()
        return self._already_attached(volume, instance_id)

    def _check_attachable(self, volume: SimVolume, instance: SimInstance) -> None:
        if self._interrupt_if_faulted(instance) or instance.state == SimInstanceState.TERMINATED:
            raise FatalError(f"instance {instance.instance_id} is {instance.state}")
        if instance.state == SimInstanceState.PROVISIONING:
            raise TransientError(f"instance {instance.instance_id} is still provisioning")
        if (volume.region, volume.availability_zone) != (instance.region, instance.availability_zone):
            raise FatalError(
                f"volume {volume.volume_id} is in {volume.availability_zone} ({volume.region}) but instance "
                f"{instance.instance_id} is in {instance.availability_zone} ({instance.region})"
            )
        if volume.attached_instance_id:
            self._already_attached(volume, instance.instance_id)

    @staticmethod
    def _already_attached(volume: SimVolume, instance_id: str) -> str:
        """Re-attaching to the same instance returns its device (a retried call); else FatalError."""
        if volume.attached_instance_id == instance_id and not volume.detach_requested:
            return volume.device_name
        where = "being detached from" if volume.detach_requested else "attached to"
        raise FatalError(f"volume {volume.volume_id} is already {where} {volume.attached_instance_id}")

    def _free_device(self, instance_id: str) -> str:
        used = set(
            SimVolume.objects.filter(backend_id=self.backend.pk, attached_instance_id=instance_id).values_list(
                "device_name", flat=True
            )
        )
        for device in DEVICE_NAMES:
            if device not in used:
                return device
        raise FatalError(f"instance {instance_id} has no free device name left")

    @_sim_call
    def detach_volume(self, *, volume_id: str, instance_id: str, force: bool, region: str = "") -> None:
        volume = self._volume(volume_id, include_deleted=True, region=region)
        if volume.attached_instance_id != instance_id:
            return  # a detach of a volume not attached to that instance has nothing left to do
        if force and any(f["volume"] == volume.name and not f["forced_ok"]
                         for f in self._faults(SimFaultKind.STUCK_DETACH)):
            raise FatalError(f"forced detach of volume {volume_id} failed (stuck_detach fault, forced_ok false)")
        changes = {"detach_requested": True, "detach_forced": True} if force else {"detach_requested": True}
        SimVolume.objects.filter(pk=volume.pk, attached_instance_id=instance_id).update(**changes)

    @_sim_call
    def is_volume_detached(self, *, volume_id: str, instance_id: str, region: str = "") -> bool:
        volume = self._volume(volume_id, include_deleted=True, region=region)
        if volume.attached_instance_id != instance_id:
            return True
        if not volume.detach_requested or self._detach_stuck(volume) or self._detach_slow(volume):
            return False
        SimVolume.objects.filter(pk=volume.pk, attached_instance_id=instance_id, detach_requested=True).update(
            **self._detached_fields()
        )
        volume.refresh_from_db(fields=["attached_instance_id"])
        return volume.attached_instance_id != instance_id

    def _detach_stuck(self, volume: SimVolume) -> bool:
        return any(
            f["volume"] == volume.name and not (volume.detach_forced and f["forced_ok"])
            for f in self._faults(SimFaultKind.STUCK_DETACH)
        )

    def _detach_slow(self, volume: SimVolume) -> bool:
        """Count this ask against a ``slow_detach`` fault; True while it is one of the first ``polls``.

        One guarded relative UPDATE counts and decides at once, so exactly ``polls`` asks are held
        back however many callers ask concurrently.
        """
        polls = max((f["polls"] for f in self._faults(SimFaultKind.SLOW_DETACH) if f["volume"] == volume.name),
                    default=0)
        return bool(polls) and bool(SimVolume.objects.filter(
            pk=volume.pk, attached_instance_id=volume.attached_instance_id, detach_requested=True,
            detach_polls__lt=polls,
        ).update(detach_polls=F("detach_polls") + 1))
