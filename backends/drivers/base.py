"""The one interface every backend driver implements, and the typed errors it may raise.

A driver is the control plane's only way to touch a provider. Its guarantees:

* Every method is a single provider call (or a short, bounded sequence of them). Drivers are
  called outside the control plane's database transactions and never open a long one themselves.
* Failures are typed: ``NoCapacityError`` (try another offer), ``NotFoundError`` (the provider
  does not know that id), ``TransientError`` (nothing changed, safe to retry) and ``FatalError``
  (the request can never succeed as asked). Callers catch ``DriverError`` for "any of them".
* Repeating a call that already succeeded is harmless where a retry after a lost reply needs it:
  terminating a terminated instance, deleting a deleted volume, detaching a detached volume and
  stopping a finished job are no-ops.
"""

from __future__ import annotations

import abc
import dataclasses
import datetime
import enum
from typing import TYPE_CHECKING, ClassVar

from core.errors import InvalidInput

if TYPE_CHECKING:
    from backends.models import Backend


# --- Errors ------------------------------------------------------------------------------------


class DriverError(Exception):
    """Base of every error a driver raises on purpose; anything else is a driver bug."""


class NoCapacityError(DriverError):
    """The provider has no capacity for that offer right now; another offer may work."""


class NotFoundError(DriverError):
    """The provider does not know the instance, volume or workload id it was given."""


class TransientError(DriverError):
    """A temporary failure (throttling, timeout, not ready yet). Nothing changed: retry later."""


class FatalError(DriverError):
    """The request can never succeed as asked (wrong zone, volume in use, bad config)."""


# --- Values --------------------------------------------------------------------------------------


class InstanceState(enum.StrEnum):
    """What the provider says about an instance. ``interrupted`` is a spot reclaim or host loss."""

    PROVISIONING = "provisioning"
    RUNNING = "running"
    TERMINATED = "terminated"
    INTERRUPTED = "interrupted"


class JobStatus(enum.StrEnum):
    """What the provider says about a workload; every status but ``running`` is final."""

    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    STOPPED = "stopped"


class VolumeStatus(enum.StrEnum):
    """What the provider says about a volume."""

    AVAILABLE = "available"
    IN_USE = "in-use"
    DELETED = "deleted"


@dataclasses.dataclass(frozen=True)
class Offer:
    """One way to get an instance: a type in a zone at a price.

    ``resources`` is ``{"cpus": int, "memory_mib": int, "gpus": [{"name": str, "memory_mib": int}],
    "disk_gb": int}``, the shape the control plane stores on its instances.
    """

    instance_type: str
    region: str
    availability_zone: str
    resources: dict
    price: float
    spot: bool


class JobFailure(enum.StrEnum):
    """Why a workload failed, as the provider knows it (never parsed from a message)."""

    ERROR = "error"  # the workload exited with an error (or crashed)
    INTERRUPTION = "interruption"  # its instance was reclaimed, lost or terminated under it
    NO_CAPACITY = "no_capacity"  # it could not get the capacity it needed


@dataclasses.dataclass(frozen=True)
class JobState:
    """A workload's status; ``exit_status`` is set when the process exited on its own.

    ``failure`` (a ``JobFailure``) says why a ``failed`` workload failed. ``probes_passing`` is the
    outcome of the workload's readiness probes at this poll: True or False, None when it has none.
    ``gpu_utilization`` is the mean utilization (%) of the job's GPUs, and ``inactive_seconds`` how long
    nobody has been attached to it (SSH or IDE session); each is None where the driver cannot tell, which
    never counts as idle (``runs.utilization``).
    """

    status: str
    exit_status: int | None
    message: str = ""
    failure: str = ""
    probes_passing: bool | None = None
    gpu_utilization: float | None = None
    inactive_seconds: int | None = None

    @property
    def finished(self) -> bool:
        return self.status != JobStatus.RUNNING


@dataclasses.dataclass(frozen=True)
class JobLaunch:
    """What ``start_jobs`` needs to start one workload."""

    job_name: str
    instance_id: str
    commands: list[str]
    env: dict
    # A start retried with the same token (after a crash or a lost reply) answers the workload the
    # first start made instead of starting a second one.
    client_token: str = ""
    # What the workload mounts, in the configuration's order: a network volume attached to the
    # instance ``{"path", "volume_id", "device_name"}`` or a directory of the instance
    # ``{"path", "instance_path"}`` (dstack's instance volumes).
    mounts: list = dataclasses.field(default_factory=list)
    # dstack's readiness probes of a service replica: [{"type": "http", "url", "interval", "timeout",
    # "ready_after", ...}]; the provider runs them and reports each poll's outcome (``probes_passing``).
    probes: list = dataclasses.field(default_factory=list)
    # The image to run (None: the driver's default) and the rest of what dstack's file says about the
    # workload (python, entrypoint, ports, files, repos, registry_auth, model...: ``runs.workload``).
    image: str | None = None
    workload: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class VolumeInfo:
    """A provider volume as the control plane records it."""

    volume_id: str
    region: str
    availability_zone: str
    size_gb: int
    status: str


@dataclasses.dataclass(frozen=True)
class TaggedResource:
    """A provider resource this control plane created (``kind`` is ``instance`` or ``volume``)."""

    kind: str
    provider_id: str
    name: str
    region: str = ""
    availability_zone: str = ""
    created_at: datetime.datetime | None = None
    tags: dict = dataclasses.field(default_factory=dict)


def one_by_one(ids: list[str], call) -> dict:
    """``{id: call(id)}``, with the ``DriverError`` a call raised in place of its answer: the default
    of the batched methods for providers that answer one id at a time."""
    results: dict = {}
    for one in ids:
        try:
            results[one] = call(one)
        except DriverError as err:
            results[one] = err
    return results


# --- Tags ---------------------------------------------------------------------------------------

# Every provider resource this control plane creates carries these tags: the orphan finder reads them
# back (``list_tagged_resources``) to tell ours apart and to find the row a resource was made for.
TAG_MANAGED = "stackyard-managed"
TAG_PROJECT = "stackyard-project"
TAG_FLEET = "stackyard-fleet"
TAG_INSTANCE = "stackyard-instance"
TAG_VOLUME = "stackyard-volume"


def managed_tags(*, project: str, fleet: str = "", instance: str = "", volume: str = "") -> dict[str, str]:
    """The tags of a resource we create: ``managed_tags(project="main", fleet="gpu8", instance="gpu8-0")``."""
    named = {TAG_FLEET: fleet, TAG_INSTANCE: instance, TAG_VOLUME: volume}
    return {TAG_MANAGED: "true", TAG_PROJECT: project, **{tag: name for tag, name in named.items() if name}}


# --- The interface ---------------------------------------------------------------------------------


class Driver(abc.ABC):
    """A provider account, bound to one ``Backend`` row.

    Construction validates the backend's config with ``validate_config``; a config that was stored
    invalid (an admin edit, an older version) surfaces as ``FatalError`` so tasks handle it like
    any other driver failure. All methods take keyword-only arguments.
    """

    type_name: ClassVar[str]

    def __init__(self, backend: Backend):
        self.backend = backend
        try:
            self.config = self.validate_config(backend.config or {})
        except InvalidInput as exc:
            raise FatalError(f"backend {backend.name!r} has an invalid config: {exc.detail}") from exc

    @classmethod
    @abc.abstractmethod
    def validate_config(cls, config: dict) -> dict:
        """Return the normalized config, or raise ``InvalidInput`` naming the bad key."""

    @classmethod
    def validate_credentials(cls, credentials: dict) -> dict:
        """Return the normalized credentials, or raise ``InvalidInput`` naming the bad key (by default
        they are kept as given)."""
        return credentials

    def check_access(self) -> None:  # noqa: B027 - optional, empty by default
        """One cheap provider call proving the config and credentials work, run when a backend is
        created or updated (nothing is stored if it fails). Raises ``DriverError`` saying which check
        failed; the default (a provider that needs no credentials) checks nothing."""

    @abc.abstractmethod
    def locations(self) -> dict[str, list[str]]:
        """The regions this backend can use and the availability zones of each (no provider call)."""

    @abc.abstractmethod
    def offers(self) -> list[Offer]:
        """Every instance type this account can launch, per zone, on-demand and spot."""

    @abc.abstractmethod
    def create_instance(self, *, name: str, offer: Offer, tags: dict[str, str] | None = None,
                        client_token: str = "", placement_group: str = "") -> str:
        """Launch an instance named ``name``, tagged with ``tags``; return the provider instance id.

        Idempotent on ``client_token``: a second call with a token already used returns the
        instance the first call made (as EC2's ClientToken does) instead of launching another.
        ``placement_group`` (a name ``create_placement_group`` returned) puts it in that group; it
        is only ever passed to drivers whose ``create_placement_group`` made one.
        """

    def create_placement_group(self, *, region: str, name: str) -> str:
        """Make the cluster placement group ``name`` in ``region`` (fast interconnect between the
        instances launched into it; ``placement: cluster`` fleets) and return its name. Idempotent:
        a group of that name that exists already is the answer. Drivers whose provider has no such
        thing answer "" (the default), and instances are then created without a group."""
        return ""

    def delete_placement_group(self, *, region: str, name: str) -> None:  # noqa: B027 - optional, empty
        """Delete the placement group; a no-op if it is gone (or the provider has none). While
        instances are still in it, ``TransientError``: ask again once they are gone."""

    @abc.abstractmethod
    def find_instance(self, *, client_token: str) -> str | None:
        """The id of the instance a create with ``client_token`` made, if it made one."""

    @abc.abstractmethod
    def terminate_instance(self, *, instance_id: str) -> None:
        """Terminate the instance; a no-op if it is already terminated."""

    @abc.abstractmethod
    def instance_state(self, *, instance_id: str) -> str:
        """One of ``InstanceState``'s values."""

    def instance_states(self, *, instance_ids: list[str]) -> dict[str, str | DriverError]:
        """Many instances' states: each id maps to its state or to the error asking raised.

        Drivers whose provider answers many at once override this; the default asks one by one.
        """
        return one_by_one(instance_ids, lambda instance_id: self.instance_state(instance_id=instance_id))

    @abc.abstractmethod
    def create_volume(self, *, name: str, region: str, availability_zone: str | None, size_gb: int,
                      tags: dict[str, str] | None = None, client_token: str = "") -> VolumeInfo:
        """Create a volume; with no zone the driver picks one in ``region`` and reports it.

        Idempotent on ``client_token``, like ``create_instance``.
        """

    @abc.abstractmethod
    def find_volume(self, *, client_token: str) -> VolumeInfo | None:
        """The volume a create with ``client_token`` made, if it made one."""

    # The volume calls below take the volume's ``region`` (and zone, where it matters): a provider
    # whose API is regional (EC2, EBS) needs it to find the volume; "" means "any region" for drivers
    # that do not care (the sim checks it when given).

    @abc.abstractmethod
    def register_volume(self, *, volume_id: str, region: str = "") -> VolumeInfo:
        """Describe an existing volume the user wants to use (``external`` volumes);
        ``NotFoundError`` if ``region`` has no such volume."""

    @abc.abstractmethod
    def delete_volume(self, *, volume_id: str, region: str = "") -> None:
        """Delete the volume; ``FatalError`` while attached; a no-op if already deleted."""

    @abc.abstractmethod
    def attach_volume(self, *, volume_id: str, instance_id: str, region: str = "",
                      availability_zone: str = "") -> str:
        """Attach the volume to the instance and return the device name.

        ``FatalError`` if the volume is attached elsewhere or lives in another region or zone;
        ``TransientError`` while the attach is still in progress (asking again is safe).
        """

    @abc.abstractmethod
    def detach_volume(self, *, volume_id: str, instance_id: str, force: bool, region: str = "") -> None:
        """Request the detach; completion is confirmed by ``is_volume_detached`` only. A detach
        error is an error, never a sign that the volume is detached."""

    @abc.abstractmethod
    def is_volume_detached(self, *, volume_id: str, instance_id: str, region: str = "") -> bool:
        """True once the volume is no longer attached to that instance."""

    @abc.abstractmethod
    def start_job(self, *, job_name: str, instance_id: str, commands: list[str], env: dict,
                  mounts: list | None = None) -> str:
        """Start the workload on the instance with its ``mounts`` (shaped as ``JobLaunch.mounts``);
        return its workload id. ``FatalError`` if a network volume it mounts is not attached there."""

    def start_jobs(self, *, jobs: list[JobLaunch]) -> list[str | DriverError]:
        """Start many workloads: for each launch, its workload id or the error starting it raised.

        Drivers whose provider takes many at once override this; the default starts one by one
        (``start_launch``).
        """
        results: list[str | DriverError] = []
        for launch in jobs:
            try:
                results.append(self.start_launch(launch))
            except DriverError as err:
                results.append(err)
        return results

    def start_launch(self, launch: JobLaunch) -> str:
        """Start one workload from its whole launch. The default calls ``start_job``, which has no
        client token or probes: drivers that honour those override this."""
        return self.start_job(job_name=launch.job_name, instance_id=launch.instance_id, commands=launch.commands,
                              env=launch.env, mounts=launch.mounts)

    @abc.abstractmethod
    def stop_job(self, *, workload_id: str) -> None:
        """Stop the workload; a no-op if it already finished."""

    def stop_jobs(self, *, workload_ids: list[str]) -> dict[str, None | DriverError]:
        """Stop many workloads: each id maps to None (stopped, or already finished) or the error.

        Drivers whose provider takes many at once override this; the default stops one by one.
        """
        return one_by_one(workload_ids, lambda workload_id: self.stop_job(workload_id=workload_id))

    @abc.abstractmethod
    def poll_job(self, *, workload_id: str) -> JobState:
        """The workload's current ``JobState``."""

    def poll_jobs(self, *, workload_ids: list[str]) -> dict[str, JobState | DriverError]:
        """Poll many workloads: each id maps to its ``JobState`` or to the error polling it raised.

        Drivers whose provider answers many at once override this; the default asks one by one.
        """
        return one_by_one(workload_ids, lambda workload_id: self.poll_job(workload_id=workload_id))

    def job_logs(self, *, workload_id: str, tail: int | None = None) -> list[str]:
        """The workload's output lines, oldest first (the last ``tail`` only, if given);
        ``NotFoundError`` for an unknown workload. Drivers that keep no output answer []."""
        return []

    @abc.abstractmethod
    def list_tagged_resources(self) -> list[TaggedResource]:
        """Every live instance and volume in this account tagged ``stackyard-managed=true`` (which this
        control plane tags all it creates with), with its location, creation time and tags."""
