"""The ``sim`` driver: a simulated cloud whose state lives in the database (like kwok or moto).

Its volume calls come from the ``SimVolumes`` mixin in ``backends.drivers.sim_volumes``, whose
docstring lists the volume guarantees and the volume faults (``stuck_detach``, ``slow_detach``,
``stuck_attach``, ``fail_volume_create``). Guarantees beyond the ``Driver`` interface:

* Every call first sleeps ``latency`` seconds, then may raise ``TransientError`` under an
  ``api_errors`` fault; such an error is raised before the call changes anything.
* A new instance reports ``provisioning`` on its first ``instance_state`` poll and ``running``
  from then on, so the control plane always walks the provisioning path.
* Terminating an instance detaches its volumes, as EBS does.
* A workload starts only if every network volume it mounts (a mount with ``volume_id``) is attached
  to its instance and not being detached; else ``FatalError``. Its mounts are kept on ``SimJob``.
* Job scripts: commands are split on ``&&``, ``;`` and newlines and run in order. ``sleep N``
  takes N seconds, ``exit K`` ends the script with status K, ``sleep infinity`` never ends (a dev
  environment's job: its init, then until stopped); every other command takes no time.
  A script with neither runs until stopped; one with sleeps and no exit ends with status 0.
* A failed workload says why (``JobState.failure``): ``interruption`` when its instance went away,
  ``error`` when it exited with an error or crashed. A workload launched with probes reports on each
  poll whether they pass (``probes_passing``): they do, unless a ``probe_fail`` fault names the job.
* A running job reports no GPU utilization and no inactivity (None: the sim cannot tell) unless told:
  a ``gpu_utilization`` fault sets the mean GPU utilization (%) it reports, an ``inactive`` fault says
  nobody has been attached to it for ``seconds`` when added, and the count grows with time from then
  on. The latest fault naming the job wins; clearing them goes back to None.
* Faults are read on every call, so adding or clearing one takes effect at once. Besides the volume
  faults, ``no_capacity`` may be limited to one ``availability_zone`` (instance creates only).
* Cluster placement groups follow EC2's rules (``sim_placement``'s docstring): one zone per group,
  no deletion while an instance is in it.
* Resources keep the tags they were created with; ``list_tagged_resources`` lists the live ones
  tagged ``stackyard-managed=true`` (created without tags, they are someone else's).
* Each write is one autocommit statement, a compare-and-swap where two callers could race: the
  driver never holds a transaction open and is safe to call from many workers at once.
"""

from __future__ import annotations

import datetime
import random
import re
import time

from django.db import IntegrityError, transaction
from django.utils import timezone

from backends.drivers import sim_catalogue
from backends.drivers.base import (
    TAG_MANAGED,
    Driver,
    DriverError,
    FatalError,
    InstanceState,
    JobFailure,
    JobLaunch,
    JobState,
    NoCapacityError,
    NotFoundError,
    Offer,
    TaggedResource,
    TransientError,
    managed_tags,
)
from backends.drivers.sim_calls import _new_id, _sim_call
from backends.drivers.sim_placement import SimPlacementGroups
from backends.drivers.sim_volumes import SimVolumes
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
_SEPARATOR = re.compile(r"&&|;|\n")
_SLEEP = re.compile(r"sleep\s+(\d+(?:\.\d*)?|\.\d+)")
_EXIT = re.compile(r"exit\s+(-?\d+)")
_SLEEP_FOREVER = re.compile(r"sleep\s+inf(inity)?")  # what a dev environment's job ends with
# Fault kinds that set what a running job reports (sim_catalogue.FAULT_SCHEMAS has their keys).
GPU_UTILIZATION_FAULT = "gpu_utilization"
INACTIVE_FAULT = "inactive"


def plan_script(commands: list[str]) -> tuple[float | None, int | None]:
    """``(duration_seconds, exit_status)`` of a sim job script, ``(None, None)`` if it never ends."""
    duration, slept = 0.0, False
    for part in (p.strip() for command in commands for p in _SEPARATOR.split(command)):
        if match := _EXIT.fullmatch(part):
            return duration, int(match.group(1)) % 256  # a shell keeps the low byte
        if match := _SLEEP.fullmatch(part):
            duration, slept = duration + float(match.group(1)), True
        if _SLEEP_FOREVER.fullmatch(part):
            return None, None
    return (duration, 0) if slept else (None, None)


def _mount_problem(launch: JobLaunch, attached: dict[str, str]) -> str:
    """Why the launch cannot start with its mounts ("" if it can): a workload never starts without its data."""
    for mount in launch.mounts:
        if not isinstance(mount, dict) or not mount.get("path"):
            return f"job {launch.job_name}: mount {mount!r} is not a mount (needs a path)"
        if (volume_id := mount.get("volume_id")) and attached.get(volume_id) != launch.instance_id:
            return f"job {launch.job_name}: volume {volume_id} is not attached to instance {launch.instance_id}"
    return ""


class SimDriver(SimPlacementGroups, SimVolumes, Driver):
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
            # An inactivity count grows from the moment its fault was added.
            params = {**fault.params, "added_at": fault.created_at} if fault.kind == INACTIVE_FAULT else fault.params
            faults.setdefault(fault.kind, []).append(params)
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
                        client_token: str = "", placement_group: str = "") -> str:
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
        if placement_group and (problem := self._placement_problem(placement_group, offer)):
            raise FatalError(problem)
        try:
            with transaction.atomic():
                instance = SimInstance.objects.create(
                    backend_id=self.backend.pk, instance_id=_new_id("i"), client_token=client_token,
                    tags=dict(tags or {}), name=name, region=offer.region, availability_zone=offer.availability_zone,
                    instance_type=offer.instance_type, spot=offer.spot, price=offer.price,
                    placement_group=placement_group,
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
                    mounts=list(launch.mounts), probes=list(launch.probes),
                    image=launch.image or "", workload=dict(launch.workload),
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

    @_sim_call
    def job_logs(self, *, workload_id: str, tail: int | None = None) -> list[str]:
        """Synthetic output: a line per command run so far, then how the workload ended."""
        job = self._job(workload_id)
        self._settle(job)  # an outcome reached by now is recorded, and read back into ``job``
        commands = [part.strip() for command in job.commands for part in _SEPARATOR.split(command) if part.strip()]
        lines = [f"[sim] {job.job_name} started on {job.instance_id}"] + [f"$ {command}" for command in commands]
        if job.state != SimJobState.RUNNING:
            lines.append(f"[sim] {job.state}: {job.message}" if job.message else f"[sim] {job.state}")
        return lines[-tail:] if tail else lines

    def _settle(self, job: SimJob, instances: dict[str, SimInstance] | None = None) -> JobState:
        """The job's state now; an outcome seen for the first time is recorded for good."""
        if job.state == SimJobState.RUNNING:
            outcome = self._outcome(job, instances)
            if outcome is None:
                return JobState(SimJobState.RUNNING.value, None, probes_passing=self._probes_passing(job),
                                gpu_utilization=self._gpu_utilization(job),
                                inactive_seconds=self._inactive_seconds(job))
            status, exit_status, message, failure = outcome
            SimJob.objects.filter(pk=job.pk, state=SimJobState.RUNNING).update(
                state=status, exit_status=exit_status, message=message, failure=failure, ended_at=timezone.now()
            )
            job.refresh_from_db()  # the stored outcome wins if another caller settled it first
        return JobState(str(job.state), job.exit_status, job.message, failure=job.failure)

    def _probes_passing(self, job: SimJob) -> bool | None:
        """A running job's probes pass unless a ``probe_fail`` fault names it; None if it has none."""
        if not job.probes:
            return None
        return not any(f["job"] == job.job_name for f in self._faults(SimFaultKind.PROBE_FAIL))

    def _gpu_utilization(self, job: SimJob) -> float | None:
        """The mean GPU utilization (%) the latest ``gpu_utilization`` fault naming the job sets, else None."""
        mine = [f for f in self._faults(GPU_UTILIZATION_FAULT) if f["job"] == job.job_name]
        return float(mine[-1]["percent"]) if mine else None

    def _inactive_seconds(self, job: SimJob) -> int | None:
        """Seconds nobody has been attached, from the latest ``inactive`` fault naming the job, else None."""
        mine = [f for f in self._faults(INACTIVE_FAULT) if f["job"] == job.job_name]
        if not mine:
            return None
        elapsed = (timezone.now() - mine[-1]["added_at"]).total_seconds()
        return mine[-1]["seconds"] + max(0, int(elapsed))

    def _outcome(self, job: SimJob, instances: dict | None = None) -> tuple[str, int | None, str, str] | None:
        """What ended a running job by now (status, exit status, message, ``JobFailure``), or None if
        it is still running."""
        now = timezone.now()
        lost_at, lost_why = self._instance_loss(job.instance_id, instances)
        if job.finishes_at is not None and job.finishes_at <= (lost_at or now):
            status = SimJobState.DONE if job.exit_status == 0 else SimJobState.FAILED
            failure = "" if job.exit_status == 0 else JobFailure.ERROR
            return status, job.exit_status, f"exited with status {job.exit_status}", failure
        if lost_at is not None:
            return SimJobState.FAILED, None, lost_why, JobFailure.INTERRUPTION
        for fault in self._faults(SimFaultKind.CRASH_JOB):
            if fault["job"] == job.job_name:
                return SimJobState.FAILED, fault["exit_status"], "crashed (crash_job fault)", JobFailure.ERROR
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
