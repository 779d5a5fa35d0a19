"""The ``sim`` driver: a simulated cloud whose state lives in the database (like kwok or moto).

Guarantees beyond the ``Driver`` interface:

* Every call first sleeps ``latency`` seconds, then may raise ``TransientError`` under an
  ``api_errors`` fault; such an error is raised before the call changes anything.
* A new instance reports ``provisioning`` on its first ``instance_state`` poll and ``running``
  from then on, so the control plane always walks the provisioning path.
* A detach is a request; it completes when ``is_volume_detached`` is next asked and no
  ``stuck_detach`` or ``slow_detach`` fault holds it. Terminating an instance detaches its volumes,
  as EBS does.
* Volume calls given a ``region`` see only that region's volumes (``NotFoundError`` for others, as a
  regional API would); ``attach_volume`` refuses a volume outside the given region or zone with
  ``FatalError``.
* A workload starts only if every network volume it mounts (a mount with ``volume_id``) is attached
  to its instance and not being detached; else ``FatalError``. Its mounts are kept on ``SimJob``.
* Job scripts: commands are split on ``&&``, ``;`` and newlines and run in order. ``sleep N``
  takes N seconds, ``exit K`` ends the script with status K; every other command takes no time.
  A script with neither runs until stopped; one with sleeps and no exit ends with status 0.
* Faults are read on every call, so adding or clearing one takes effect at once. Volume faults:
  ``stuck_detach`` (an unforced detach never completes; a forced one completes if ``forced_ok``, else
  it raises ``FatalError`` and changes nothing), ``slow_detach`` (``is_volume_detached`` answers
  False ``polls`` times after the request, counted in ``SimVolume.detach_polls``), ``stuck_attach``
  (``TransientError``, nothing attached), ``fail_volume_create`` (``FatalError``; a create retried
  with a token that already made a volume still answers it) and ``no_capacity`` limited to one
  ``availability_zone`` (instance creates only).
* Resources keep the tags they were created with; ``list_tagged_resources`` lists the live ones
  tagged ``stackyard-managed=true`` (created without tags, they are someone else's).
* Each write is one autocommit statement, a compare-and-swap where two callers could race: the
  driver never holds a transaction open and is safe to call from many workers at once.
"""

from __future__ import annotations

import datetime
import functools
import random
import re
import time
import uuid

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from backends.drivers import sim_catalogue
from backends.drivers.base import (
    TAG_MANAGED,
    Driver,
    DriverError,
    FatalError,
    InstanceState,
    JobLaunch,
    JobState,
    NoCapacityError,
    NotFoundError,
    Offer,
    TaggedResource,
    TransientError,
    VolumeInfo,
    managed_tags,
)

# validate_fault is part of this module's service API (with add_fault, list_faults, clear_faults).
from backends.sim_models import (
    SimFault,
    SimFaultKind,
    SimInstance,
    SimInstanceState,
    SimJob,
    SimJobState,
    SimVolume,
    SimVolumeState,
)

LIVE_INSTANCE_STATES = (SimInstanceState.PROVISIONING, SimInstanceState.RUNNING)
# AWS recommends /dev/sdf../dev/sdp for data volumes; the sim hands them out in order.
DEVICE_NAMES = [f"/dev/sd{letter}" for letter in "fghijklmnop"]
_SEPARATOR = re.compile(r"&&|;|\n")
_SLEEP = re.compile(r"sleep\s+(\d+(?:\.\d*)?|\.\d+)")
_EXIT = re.compile(r"exit\s+(-?\d+)")


def plan_script(commands: list[str]) -> tuple[float | None, int | None]:
    """``(duration_seconds, exit_status)`` of a sim job script, ``(None, None)`` if it never ends."""
    duration, slept = 0.0, False
    for part in (p.strip() for command in commands for p in _SEPARATOR.split(command)):
        if match := _EXIT.fullmatch(part):
            return duration, int(match.group(1)) % 256  # a shell keeps the low byte
        if match := _SLEEP.fullmatch(part):
            duration, slept = duration + float(match.group(1)), True
    return (duration, 0) if slept else (None, None)


def _mount_problem(launch: JobLaunch, attached: dict[str, str]) -> str:
    """Why the launch cannot start with its mounts ("" if it can): a workload never starts without its data."""
    for mount in launch.mounts:
        if not isinstance(mount, dict) or not mount.get("path"):
            return f"job {launch.job_name}: mount {mount!r} is not a mount (needs a path)"
        if (volume_id := mount.get("volume_id")) and attached.get(volume_id) != launch.instance_id:
            return f"job {launch.job_name}: volume {volume_id} is not attached to instance {launch.instance_id}"
    return ""


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:17]}"


def _sim_call(method):
    """Give a driver call the configured latency and the ``api_errors`` fault, before it acts."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        self._enter_call()
        return method(self, *args, **kwargs)

    return wrapper


class SimDriver(Driver):
    """The driver of ``sim`` backends; see the module docstring for the simulated behaviour."""

    type_name = "sim"

    def __init__(self, backend):
        super().__init__(backend)
        self.settings = sim_catalogue.effective_config(self.config)
        # A driver-owned generator lets tests seed the api_errors dice without touching global state.
        self.rng = random.Random()
        self._call_faults: dict[str, list[dict]] | None = None

    @classmethod
    def validate_config(cls, config: dict) -> dict:
        return sim_catalogue.validate_config(config)

    # --- plumbing ---------------------------------------------------------------------------

    def _enter_call(self) -> None:
        if self.settings["latency"]:
            time.sleep(self.settings["latency"])
        self._load_faults()  # fresh for every call: a fault applies from the next call on
        for fault in self._faults(SimFaultKind.API_ERRORS):
            if self.rng.random() < fault["rate"]:
                raise TransientError("simulated provider API error (api_errors fault)")

    def _load_faults(self) -> None:
        # One query per call for every kind: a call may consult several (api_errors, interrupt...).
        faults: dict[str, list[dict]] = {}
        for fault in SimFault.objects.filter(backend_id=self.backend.pk).order_by("id"):
            faults.setdefault(fault.kind, []).append(fault.params)
        self._call_faults = faults

    def _faults(self, kind: str) -> list[dict]:
        if self._call_faults is None:
            self._load_faults()
        return self._call_faults.get(kind, [])

    def locations(self) -> dict[str, list[str]]:
        return {region: sim_catalogue.zones_of(region) for region in self.settings["regions"]}

    def _instance(self, instance_id: str) -> SimInstance:
        try:
            return SimInstance.objects.get(backend_id=self.backend.pk, instance_id=instance_id)
        except SimInstance.DoesNotExist:
            raise NotFoundError(f"instance {instance_id!r} not found") from None

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

    def _job(self, workload_id: str) -> SimJob:
        try:
            return SimJob.objects.get(backend_id=self.backend.pk, workload_id=workload_id)
        except SimJob.DoesNotExist:
            raise NotFoundError(f"workload {workload_id!r} not found") from None

    # --- offers and instances ---------------------------------------------------------------

    @_sim_call
    def offers(self) -> list[Offer]:
        return [
            self._offer(itype, region, zone, spot)
            for itype in self.settings["instance_types"]
            for region, zones in self.locations().items()
            for zone in zones
            for spot in (False, True)
        ]

    @staticmethod
    def _offer(itype: dict, region: str, zone: str, spot: bool) -> Offer:
        price = round(itype["price"] * (sim_catalogue.SPOT_PRICE_FACTOR if spot else 1), 4)
        resources = {
            "cpus": itype["cpus"],
            "memory_mib": itype["memory_mib"],
            "gpus": [dict(gpu) for gpu in itype["gpus"]],
            "disk_gb": itype["disk_gb"],
        }
        return Offer(itype["name"], region, zone, resources, price, spot)

    @_sim_call
    def create_instance(self, *, name: str, offer: Offer, tags: dict[str, str] | None = None,
                        client_token: str = "") -> str:
        if client_token and (existing := self._instance_by_token(client_token)) is not None:
            return existing
        if offer.instance_type not in {t["name"] for t in self.settings["instance_types"]}:
            raise FatalError(f"instance type {offer.instance_type!r} is not offered by this backend")
        if offer.availability_zone not in self.locations().get(offer.region, []):
            raise FatalError(f"zone {offer.availability_zone!r} is not in this backend's region {offer.region!r}")
        zone = offer.availability_zone
        if any(f["region"] == offer.region and f.get("availability_zone", zone) == zone
               for f in self._faults(SimFaultKind.NO_CAPACITY)):
            raise NoCapacityError(f"no capacity for {offer.instance_type} in {zone} (no_capacity fault)")
        try:
            with transaction.atomic():
                instance = SimInstance.objects.create(
                    backend_id=self.backend.pk, instance_id=_new_id("i"), client_token=client_token,
                    tags=dict(tags or {}), name=name, region=offer.region, availability_zone=offer.availability_zone,
                    instance_type=offer.instance_type, spot=offer.spot, price=offer.price,
                )
        except IntegrityError:  # a concurrent create with the same token won: its instance is ours
            return self._instance_by_token(client_token)
        return instance.instance_id

    def _instance_by_token(self, client_token: str) -> str | None:
        return (SimInstance.objects.filter(backend_id=self.backend.pk, client_token=client_token)
                .values_list("instance_id", flat=True).first())

    @_sim_call
    def find_instance(self, *, client_token: str) -> str | None:
        return self._instance_by_token(client_token) if client_token else None

    @_sim_call
    def terminate_instance(self, *, instance_id: str) -> None:
        instance = self._instance(instance_id)
        SimInstance.objects.filter(pk=instance.pk).exclude(state=SimInstanceState.TERMINATED).update(
            state=SimInstanceState.TERMINATED, ended_at=timezone.now()
        )
        # As with EBS, the volumes of a terminated instance become available again.
        SimVolume.objects.filter(backend_id=self.backend.pk, attached_instance_id=instance_id).update(
            **self._detached_fields()
        )

    @_sim_call
    def instance_state(self, *, instance_id: str) -> str:
        return self._state_now(self._instance(instance_id))

    @_sim_call
    def instance_states(self, *, instance_ids: list[str]) -> dict[str, str | DriverError]:
        """One simulated API call for many instances (read in one query)."""
        found = {i.instance_id: i for i in SimInstance.objects.filter(backend_id=self.backend.pk,
                                                                      instance_id__in=instance_ids)}
        results: dict[str, str | DriverError] = {}
        for instance_id in instance_ids:
            instance = found.get(instance_id)
            results[instance_id] = (NotFoundError(f"instance {instance_id!r} not found") if instance is None
                                    else self._state_now(instance))
        return results

    def _state_now(self, instance: SimInstance) -> str:
        if self._interrupt_if_faulted(instance):
            return InstanceState.INTERRUPTED
        if instance.state == SimInstanceState.PROVISIONING:
            SimInstance.objects.filter(pk=instance.pk, state=SimInstanceState.PROVISIONING).update(
                state=SimInstanceState.RUNNING
            )
        return InstanceState(instance.state)

    def _interrupt_if_faulted(self, instance: SimInstance) -> bool:
        """Apply an ``interrupt_instance`` fault to a live instance; True if it is now interrupted.

        The interruption is recorded, not recomputed: like a reclaimed spot VM, an interrupted
        instance stays interrupted after the fault is cleared.
        """
        if instance.state not in LIVE_INSTANCE_STATES:
            return instance.state == SimInstanceState.INTERRUPTED
        if not any(f["instance"] == instance.name for f in self._faults(SimFaultKind.INTERRUPT_INSTANCE)):
            return False
        instance.ended_at = timezone.now()
        SimInstance.objects.filter(pk=instance.pk, state__in=LIVE_INSTANCE_STATES).update(
            state=SimInstanceState.INTERRUPTED, ended_at=instance.ended_at
        )
        instance.refresh_from_db(fields=["state", "ended_at"])
        return instance.state == SimInstanceState.INTERRUPTED

    # --- volumes ----------------------------------------------------------------------------

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

    # --- jobs -------------------------------------------------------------------------------

    @_sim_call
    def start_job(self, *, job_name: str, instance_id: str, commands: list[str], env: dict,
                  mounts: list | None = None) -> str:
        launch = JobLaunch(job_name, instance_id, list(commands), dict(env), mounts=list(mounts or []))
        result = self._start_many([launch])[0]
        if isinstance(result, DriverError):
            raise result
        return result

    @_sim_call
    def start_jobs(self, *, jobs: list[JobLaunch]) -> list[str | DriverError]:
        """One simulated API call for many launches (instances read once, workloads inserted at once)."""
        return self._start_many(jobs)

    def _start_many(self, launches: list[JobLaunch]) -> list[str | DriverError]:
        instances = {i.instance_id: i for i in SimInstance.objects.filter(
            backend_id=self.backend.pk, instance_id__in={launch.instance_id for launch in launches})}
        # A start retried with its token answers the workload the first one made (after a crash).
        tokens = {launch.client_token for launch in launches if launch.client_token}
        started = dict(SimJob.objects.filter(backend_id=self.backend.pk, client_token__in=tokens)
                       .values_list("client_token", "workload_id")) if tokens else {}
        attached = self._attachments({m.get("volume_id") for launch in launches for m in launch.mounts
                                      if isinstance(m, dict)} - {None, ""})
        now, results, rows = timezone.now(), [], []
        for launch in launches:
            instance = instances.get(launch.instance_id)
            if launch.client_token in started:
                results.append(started[launch.client_token])
            elif instance is None:
                results.append(NotFoundError(f"no instance {launch.instance_id}"))
            elif self._interrupt_if_faulted(instance) or instance.state == SimInstanceState.TERMINATED:
                results.append(FatalError(f"instance {launch.instance_id} is {instance.state}"))
            elif instance.state == SimInstanceState.PROVISIONING:
                results.append(TransientError(f"instance {launch.instance_id} is still provisioning"))
            elif problem := _mount_problem(launch, attached):
                results.append(FatalError(problem))
            else:
                duration, exit_status = plan_script(list(launch.commands))
                rows.append(SimJob(
                    backend_id=self.backend.pk, workload_id=_new_id("w"), client_token=launch.client_token,
                    job_name=launch.job_name,
                    instance_id=launch.instance_id, commands=list(launch.commands), env=dict(launch.env),
                    mounts=list(launch.mounts),
                    started_at=now, exit_status=exit_status,
                    finishes_at=None if duration is None else now + datetime.timedelta(seconds=duration),
                ))
                results.append(rows[-1].workload_id)
        SimJob.objects.bulk_create(rows)
        return results

    def _attachments(self, volume_ids: set[str]) -> dict[str, str]:
        """``{volume_id: instance_id}`` of those volumes attached and not being detached (one query)."""
        return dict(SimVolume.objects.filter(backend_id=self.backend.pk, volume_id__in=volume_ids,
                                             detach_requested=False).exclude(attached_instance_id="")
                    .values_list("volume_id", "attached_instance_id")) if volume_ids else {}

    @_sim_call
    def stop_job(self, *, workload_id: str) -> None:
        job = self._job(workload_id)
        if self._settle(job).status == SimJobState.RUNNING:
            SimJob.objects.filter(pk=job.pk, state=SimJobState.RUNNING).update(
                state=SimJobState.STOPPED, exit_status=None, message="stopped", ended_at=timezone.now()
            )

    @_sim_call
    def stop_jobs(self, *, workload_ids: list[str]) -> dict[str, None | DriverError]:
        """One simulated API call for many stops (read in two queries, stopped in one update)."""
        jobs, instances = self._jobs_and_instances(workload_ids)
        # An outcome reached before the stop (it finished, its instance went) is kept, as stop_job does.
        still_running = [j.pk for j in jobs.values() if self._settle(j, instances).status == SimJobState.RUNNING]
        SimJob.objects.filter(pk__in=still_running, state=SimJobState.RUNNING).update(
            state=SimJobState.STOPPED, exit_status=None, message="stopped", ended_at=timezone.now())
        return {w: None if w in jobs else NotFoundError(f"no workload {w}") for w in workload_ids}

    def _jobs_and_instances(self, workload_ids: list[str]) -> tuple[dict, dict]:
        """The workloads by id and their instances by id, in two queries."""
        jobs = {j.workload_id: j for j in SimJob.objects.filter(backend_id=self.backend.pk,
                                                                 workload_id__in=workload_ids)}
        instances = {i.instance_id: i for i in SimInstance.objects.filter(
            backend_id=self.backend.pk, instance_id__in={j.instance_id for j in jobs.values()})}
        return jobs, instances

    @_sim_call
    def poll_job(self, *, workload_id: str) -> JobState:
        return self._settle(self._job(workload_id))

    @_sim_call
    def poll_jobs(self, *, workload_ids: list[str]) -> dict[str, JobState | DriverError]:
        """One simulated API call for many workloads (jobs and their instances read in two queries)."""
        jobs, instances = self._jobs_and_instances(workload_ids)
        return {w: self._settle(jobs[w], instances) if w in jobs else NotFoundError(f"no workload {w}")
                for w in workload_ids}

    def _settle(self, job: SimJob, instances: dict[str, SimInstance] | None = None) -> JobState:
        """The job's state now; an outcome seen for the first time is recorded for good."""
        if job.state == SimJobState.RUNNING:
            outcome = self._outcome(job, instances)
            if outcome is None:
                return JobState(SimJobState.RUNNING.value, None)
            status, exit_status, message = outcome
            SimJob.objects.filter(pk=job.pk, state=SimJobState.RUNNING).update(
                state=status, exit_status=exit_status, message=message, ended_at=timezone.now()
            )
            job.refresh_from_db()  # the stored outcome wins if another caller settled it first
        return JobState(str(job.state), job.exit_status, job.message)

    def _outcome(self, job: SimJob, instances: dict | None = None) -> tuple[str, int | None, str] | None:
        """What ended a running job by now, or None if it is still running."""
        now = timezone.now()
        lost_at, lost_why = self._instance_loss(job.instance_id, instances)
        if job.finishes_at is not None and job.finishes_at <= (lost_at or now):
            status = SimJobState.DONE if job.exit_status == 0 else SimJobState.FAILED
            return status, job.exit_status, f"exited with status {job.exit_status}"
        if lost_at is not None:
            return SimJobState.FAILED, None, lost_why
        for fault in self._faults(SimFaultKind.CRASH_JOB):
            if fault["job"] == job.job_name:
                return SimJobState.FAILED, fault["exit_status"], "crashed (crash_job fault)"
        return None

    def _instance_loss(self, instance_id: str, instances: dict | None = None) -> tuple[datetime.datetime | None, str]:
        """When and why the job's instance went away, or ``(None, "")`` while it is alive."""
        if instances is not None:
            instance = instances.get(instance_id)
        else:
            instance = SimInstance.objects.filter(backend_id=self.backend.pk, instance_id=instance_id).first()
        if instance is None:
            return timezone.now(), f"instance {instance_id} is gone"
        if self._interrupt_if_faulted(instance) or instance.state == SimInstanceState.TERMINATED:
            return instance.ended_at or timezone.now(), f"instance {instance.name} was {instance.state}"
        return None, ""

    # --- inventory --------------------------------------------------------------------------

    @_sim_call
    def list_tagged_resources(self) -> list[TaggedResource]:
        """Live instances and volumes tagged ``stackyard-managed=true``; untagged ones are not ours."""
        instances = SimInstance.objects.filter(backend_id=self.backend.pk, state__in=LIVE_INSTANCE_STATES)
        volumes = SimVolume.objects.filter(backend_id=self.backend.pk).exclude(state=SimVolumeState.DELETED)
        resources = [TaggedResource("instance", i.instance_id, i.name, i.region, i.availability_zone, i.created_at,
                                    dict(i.tags)) for i in instances]
        resources += [TaggedResource("volume", v.volume_id, v.name, v.region, v.availability_zone, v.created_at,
                                     dict(v.tags)) for v in volumes]
        return [r for r in resources if r.tags.get(TAG_MANAGED) == "true"]

    def plant_orphan(self, *, region: str, name: str = "") -> SimInstance:
        """A running VM tagged as ours that no control-plane row knows (the ``orphan_instance`` fault).

        Not a provider call: it is the simulated world changing behind the control plane's back.
        """
        zones = self.locations()
        if region not in zones:
            raise FatalError(f"region {region!r} is not one of this backend's regions: {', '.join(zones)}")
        name = name or _new_id("ghost")
        itype = self.settings["instance_types"][0]
        tags = managed_tags(project=self.backend.project.name, fleet="ghost", instance=name)
        return SimInstance.objects.create(
            backend_id=self.backend.pk, instance_id=_new_id("i"), tags=tags, name=name, region=region,
            availability_zone=zones[region][0], instance_type=itype["name"], price=itype["price"],
            state=SimInstanceState.RUNNING,
        )
