"""The ``local`` driver: this machine as one instance, jobs as real processes, volumes as directories.

Everything lives under the backend's folder, ``$STACKYARD_DATA_DIR/local/<project>/<backend>/`` (or
``$STACKYARD_DATA_DIR/<data_dir>`` when the config names one): ``state/`` (a JSON record per instance
and volume), ``volumes/<name>/`` (the volumes' data) and ``jobs/<workload id>/`` (each job's script,
working directory, output and exit status; see ``backends.drivers.local_jobs``). Any worker process on
this machine can answer for any of them, and they outlive the processes that made them: workers may
restart, jobs keep running and are found again. Every worker of a Stackyard using a local backend must
run on this machine.

Guarantees beyond the ``Driver`` interface:

* One offer: instance type ``local`` in region and zone ``local``, this machine's real CPUs, memory,
  GPUs (``nvidia-smi``) and disk, price 0, on-demand (``backends.drivers.local_host``).
* An instance is a record: ``local-<hostname>-<client token>``, ``running`` as soon as it is created,
  ``terminated`` once terminated, which stops every job started on it and detaches its volumes.
  Several instances may exist (a fleet of ``nodes: 2``); they all are this machine.
* A volume is the directory ``volumes/<name>``, id ``local-vol-<name>``; its size is recorded, not
  enforced. Attach and detach are bookkeeping and complete at once; the device name is the directory
  relative to the backend's folder (``volumes/<name>``). A volume attaches to one instance at a time, is
  deleted (directory and all) only once detached, and an existing directory ``volumes/<name>`` can be
  registered as an external volume with ``volume_id: local-vol-<name>``.
* Records change under an exclusive lock on the backend's folder (``flock``), written atomically, so
  concurrent workers never lose an update; a repeated create with its client token answers the first.
* A local backend runs any command it is given as the user running Stackyard: whoever may submit runs to
  it may run anything as that user.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import re
import shutil
import socket
import time
import uuid
from pathlib import Path, PurePosixPath

from django.conf import settings

from backends.drivers import local_host
from backends.drivers.base import (
    TAG_MANAGED,
    Driver,
    FatalError,
    InstanceState,
    NotFoundError,
    Offer,
    TaggedResource,
    VolumeInfo,
    VolumeStatus,
)
from backends.drivers.local_host import SAFE_NAME, read_json, safe_part, write_json
from backends.drivers.local_jobs import LocalJobs
from backends.drivers.orphan_policy import ORPHAN_KEYS, validate_orphan_keys
from core.errors import InvalidInput

LOCATION = "local"
INSTANCE_TYPE = "local"
CONFIG_KEYS = ("data_dir", *ORPHAN_KEYS)
VOLUME_PREFIX = "local-vol-"
TERMINATED = "terminated"


def _hostname() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:40] or "host"


def _now() -> float:
    return time.time()


def _as_datetime(epoch: float | None) -> datetime.datetime | None:
    return None if epoch is None else datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC)


def _invalid(key: str, detail: str) -> InvalidInput:
    return InvalidInput(detail, code="invalid_config", field=key)


class LocalDriver(LocalJobs, Driver):
    """The driver of ``local`` backends; see the module docstring."""

    type_name = "local"

    @classmethod
    def validate_config(cls, config: dict) -> dict:
        if not isinstance(config, dict):
            raise _invalid("config", "the local config must be an object")
        unknown = sorted(set(config) - set(CONFIG_KEYS))
        if unknown:
            raise _invalid(unknown[0], f"unknown local config key {unknown[0]!r}; allowed: {', '.join(CONFIG_KEYS)}")
        cleaned = {}
        if "data_dir" in config:
            value = config["data_dir"]
            parts = PurePosixPath(value).parts if isinstance(value, str) else ()
            if not parts or PurePosixPath(value).is_absolute() or ".." in parts or len(value) > 200:
                raise _invalid("data_dir", "data_dir must be a relative folder inside STACKYARD_DATA_DIR "
                                           "(no '..'), for example 'local-gpu'")
            cleaned["data_dir"] = value
        cleaned.update(validate_orphan_keys(config))
        return cleaned

    # --- paths and records ---------------------------------------------------------------------

    @property
    def root(self) -> Path:
        """The backend's folder (read from the settings at each call: tests point them elsewhere)."""
        data_dir = Path(settings.DATA_DIR)
        if "data_dir" in self.config:
            return data_dir / self.config["data_dir"]
        return data_dir / "local" / safe_part(self.backend.project.name) / safe_part(self.backend.name)

    def _record_path(self, kind: str, record_id: str) -> Path:
        if not SAFE_NAME.fullmatch(record_id) or ".." in record_id:
            raise NotFoundError(f"{kind[:-1]} {record_id!r} not found")
        return self.root / "state" / kind / f"{record_id}.json"

    @contextlib.contextmanager
    def _locked(self):
        """Exclusive across every process of this machine, for read-modify-write of the records."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self, kind: str, record_id: str) -> dict | None:
        return read_json(self._record_path(kind, record_id))

    def _write(self, kind: str, record: dict) -> None:
        write_json(self._record_path(kind, record["id"]), record)

    def _records(self, kind: str) -> list[dict]:
        folder = self.root / "state" / kind
        records = []
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            with contextlib.suppress(FileNotFoundError, ValueError):
                records.append(json.loads(path.read_text()))
        return records

    def _must(self, kind: str, record_id: str) -> dict:
        record = self._read(kind, record_id)
        if record is None:
            raise NotFoundError(f"{kind[:-1]} {record_id!r} not found")
        return record

    # --- offers and instances ------------------------------------------------------------------

    def locations(self) -> dict[str, list[str]]:
        return {LOCATION: [LOCATION]}

    def offers(self) -> list[Offer]:
        resources = local_host.machine_resources(self.root)
        return [Offer(INSTANCE_TYPE, LOCATION, LOCATION, {**resources, "gpus": [dict(g) for g in resources["gpus"]]},
                      0.0, False)]

    def create_instance(self, *, name: str, offer: Offer, tags: dict[str, str] | None = None,
                        client_token: str = "") -> str:
        if (offer.instance_type, offer.region, offer.availability_zone) != (INSTANCE_TYPE, LOCATION, LOCATION):
            raise FatalError(f"the local backend offers only instance type {INSTANCE_TYPE!r} in {LOCATION!r}, "
                             f"not {offer.instance_type!r} in {offer.availability_zone!r}")
        suffix = safe_part(client_token) if client_token else uuid.uuid4().hex[:12]
        instance_id = f"local-{_hostname()}-{suffix}"
        with self._locked():
            if self._read("instances", instance_id) is None:
                self._write("instances", {"id": instance_id, "name": name, "client_token": client_token,
                                          "tags": dict(tags or {}), "state": InstanceState.RUNNING.value,
                                          "created_at": _now(), "ended_at": None})
        return instance_id

    def find_instance(self, *, client_token: str) -> str | None:
        if not client_token:
            return None
        return next((r["id"] for r in self._records("instances") if r["client_token"] == client_token), None)

    def terminate_instance(self, *, instance_id: str) -> None:
        with self._locked():
            record = self._must("instances", instance_id)
            if record["state"] != TERMINATED:
                record.update(state=TERMINATED, ended_at=_now())
                self._write("instances", record)
            for volume in self._records("volumes"):  # as on a cloud, its volumes become available again
                if volume["attached_instance_id"] == instance_id:
                    self._write("volumes", {**volume, "attached_instance_id": "", "state": VolumeStatus.AVAILABLE})
        self.stop_instance_jobs(instance_id)

    def instance_state(self, *, instance_id: str) -> str:
        record = self._must("instances", instance_id)
        return InstanceState.TERMINATED if record["state"] == TERMINATED else InstanceState.RUNNING

    def _live_instance(self, instance_id: str) -> dict:
        record = self._must("instances", instance_id)
        if record["state"] == TERMINATED:
            raise FatalError(f"instance {instance_id} is terminated")
        return record

    # --- volumes -------------------------------------------------------------------------------

    def volume_dir(self, record: dict) -> Path:
        return self.root / "volumes" / record["dir"]

    @staticmethod
    def _info(record: dict) -> VolumeInfo:
        return VolumeInfo(record["id"], LOCATION, LOCATION, record["size_gb"], record["state"])

    def _check_location(self, region: str, availability_zone: str | None) -> None:
        if region not in ("", LOCATION) or availability_zone not in (None, "", LOCATION):
            raise FatalError(f"the local backend has one region and zone, {LOCATION!r}, not "
                             f"{availability_zone or region!r}")

    def create_volume(self, *, name: str, region: str, availability_zone: str | None, size_gb: int,
                      tags: dict[str, str] | None = None, client_token: str = "") -> VolumeInfo:
        if client_token and (existing := self.find_volume(client_token=client_token)) is not None:
            return existing
        self._check_location(region, availability_zone)
        if not isinstance(size_gb, int) or isinstance(size_gb, bool) or size_gb <= 0:
            raise FatalError(f"volume size must be a positive number of GB, not {size_gb!r}")
        if not SAFE_NAME.fullmatch(name) or ".." in name:
            raise FatalError(f"volume name {name!r} cannot be a directory name")
        volume_id = VOLUME_PREFIX + name
        with self._locked():
            record = self._read("volumes", volume_id)
            if record is not None and record["state"] != VolumeStatus.DELETED:
                if client_token and record["client_token"] == client_token:
                    return self._info(record)
                raise FatalError(f"volume directory {name!r} is already in use on this machine; register it with "
                                 f"volume_id: {volume_id}")
            record = {"id": volume_id, "name": name, "dir": name, "size_gb": size_gb, "client_token": client_token,
                      "tags": dict(tags or {}), "state": VolumeStatus.AVAILABLE.value, "attached_instance_id": "",
                      "created_at": _now()}
            self.volume_dir(record).mkdir(parents=True, exist_ok=True)  # kept if it exists: its files stay
            self._write("volumes", record)
        return self._info(record)

    def find_volume(self, *, client_token: str) -> VolumeInfo | None:
        if not client_token:
            return None
        found = [r for r in self._records("volumes") if r["client_token"] == client_token]
        return self._info(found[0]) if found else None

    def register_volume(self, *, volume_id: str, region: str = "") -> VolumeInfo:
        """A volume this backend made, or any directory ``volumes/<name>`` as ``local-vol-<name>``."""
        self._check_location(region, None)
        name = volume_id.removeprefix(VOLUME_PREFIX)
        with self._locked():
            record = self._read("volumes", volume_id)
            if record is not None and record["state"] != VolumeStatus.DELETED:
                return self._info(record)
            if not volume_id.startswith(VOLUME_PREFIX) or not SAFE_NAME.fullmatch(name) or ".." in name \
                    or not (self.root / "volumes" / name).is_dir():
                raise NotFoundError(f"volume {volume_id!r} not found: no directory {self.root / 'volumes' / name}")
            record = {"id": volume_id, "name": name, "dir": name, "size_gb": 0, "client_token": "", "tags": {},
                      "state": VolumeStatus.AVAILABLE.value, "attached_instance_id": "", "created_at": _now()}
            self._write("volumes", record)
        return self._info(record)

    def delete_volume(self, *, volume_id: str, region: str = "") -> None:
        with self._locked():
            record = self._must("volumes", volume_id)
            if record["state"] == VolumeStatus.DELETED:
                return
            if record["attached_instance_id"]:
                raise FatalError(f"volume {volume_id!r} is attached to {record['attached_instance_id']}; "
                                 "detach it first")
            shutil.rmtree(self.volume_dir(record), ignore_errors=True)
            self._write("volumes", {**record, "state": VolumeStatus.DELETED.value})

    def attach_volume(self, *, volume_id: str, instance_id: str, region: str = "",
                      availability_zone: str = "") -> str:
        self._check_location(region, availability_zone)
        with self._locked():
            record = self._must("volumes", volume_id)
            if record["state"] == VolumeStatus.DELETED:
                raise NotFoundError(f"volume {volume_id!r} not found")
            self._live_instance(instance_id)
            if record["attached_instance_id"] not in ("", instance_id):
                raise FatalError(f"volume {volume_id} is already attached to {record['attached_instance_id']}")
            self.volume_dir(record).mkdir(parents=True, exist_ok=True)
            self._write("volumes", {**record, "attached_instance_id": instance_id, "state": VolumeStatus.IN_USE})
        return f"volumes/{record['dir']}"

    def detach_volume(self, *, volume_id: str, instance_id: str, force: bool, region: str = "") -> None:
        with self._locked():
            record = self._must("volumes", volume_id)
            if record["attached_instance_id"] == instance_id:
                self._write("volumes", {**record, "attached_instance_id": "", "state": VolumeStatus.AVAILABLE})

    def is_volume_detached(self, *, volume_id: str, instance_id: str, region: str = "") -> bool:
        return self._must("volumes", volume_id)["attached_instance_id"] != instance_id

    def attached_volume(self, volume_id: str, instance_id: str) -> dict:
        """The record of a volume attached to the instance, else ``FatalError`` (a job never starts
        without its data)."""
        record = self._read("volumes", volume_id) if SAFE_NAME.fullmatch(volume_id) else None
        if record is None or record["attached_instance_id"] != instance_id:
            raise FatalError(f"volume {volume_id} is not attached to instance {instance_id}")
        return record

    # --- inventory -----------------------------------------------------------------------------

    def list_tagged_resources(self) -> list[TaggedResource]:
        """Instances not terminated and volumes not deleted, tagged ``stackyard-managed=true``."""
        resources = [TaggedResource("instance", r["id"], r["name"], LOCATION, LOCATION, _as_datetime(r["created_at"]),
                                    dict(r["tags"])) for r in self._records("instances") if r["state"] != TERMINATED]
        resources += [TaggedResource("volume", r["id"], r["name"], LOCATION, LOCATION, _as_datetime(r["created_at"]),
                                     dict(r["tags"])) for r in self._records("volumes")
                      if r["state"] != VolumeStatus.DELETED]
        return [r for r in resources if r.tags.get(TAG_MANAGED) == "true"]
