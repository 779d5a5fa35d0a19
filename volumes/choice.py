"""Which volume serves each mount point of a job, given where the job lands.

A mount point lists candidate volumes in preference order (``name: [vol-eu, vol-us]``). A location
(backend, region, zone) can serve a job when it holds a usable candidate for every mount point; the
job then attaches, for each mount point, the first listed candidate usable there. When no location
can, ``explain`` names each mount point and each candidate with its location and why it is unusable.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import OuterRef, Subquery

from backends.models import BackendStatus
from volumes.models import ATTACHMENT_LIVE_STATES, Volume, VolumeAttachment, VolumeStatus


def network_mounts(spec: dict) -> list[dict]:
    """The mount points of a run spec that take a network volume (instance volumes have no ``name``)."""
    return [mount for mount in spec.get("volumes") or [] if "name" in mount]


def instance_mounts(spec: dict) -> list[dict]:
    """The run's instance volumes: a directory of the instance, mounted with no attach."""
    return [mount for mount in spec.get("volumes") or [] if "instance_path" in mount]


def _place(volume: Volume) -> str:
    backend = volume.backend.name if volume.backend else "no backend"
    return f"{backend}, {volume.availability_zone or volume.region}"


class VolumeChoice:
    """The candidates of one run's mount points, read once (a query), and where they can serve it.

    ``taken``: volumes already promised to other jobs in this placement pass.
    """

    def __init__(self, *, project_id: int, spec: dict, taken: set[int] | None = None):
        self.spec = spec
        self.mounts = network_mounts(spec)
        self.taken = taken if taken is not None else set()
        names = {name for mount in self.mounts for name in mount["name"]}
        holder = VolumeAttachment.objects.filter(volume=OuterRef("pk"), status__in=ATTACHMENT_LIVE_STATES)
        self.volumes = {
            volume.name: volume for volume in Volume.objects.filter(project_id=project_id, name__in=names)
            .exclude(status=VolumeStatus.DELETED).select_related("backend")
            .annotate(held_by=Subquery(holder.values("instance__name")[:1]),
                      held_status=Subquery(holder.values("status")[:1]))
        }

    def unusable(self, volume: Volume) -> str | None:
        """Why the volume cannot serve anyone now, wherever the job lands; None if it can."""
        if volume.status != VolumeStatus.ACTIVE:
            detail = f": {volume.status_message}" if volume.status_message else ""
            return f"not active ({volume.status}{detail})"
        if volume.held_by is not None:
            return f"attached elsewhere (instance {volume.held_by}, {volume.held_status})"
        if volume.pk in self.taken:
            return "attached elsewhere (just given to another job)"
        if volume.backend is None or volume.backend.status == BackendStatus.DRAINING:
            return "its backend is draining" if volume.backend else "its backend is gone"
        return None

    def _usable(self, name: str) -> Volume | None:
        volume = self.volumes.get(name)
        return volume if volume is not None and self.unusable(volume) is None else None

    @staticmethod
    def _serves(volume: Volume, backend_id: int, region: str, zone: str) -> bool:
        return (volume.backend_id == backend_id and volume.region == region
                and (not volume.availability_zone or volume.availability_zone == zone))

    def pick(self, backend_id: int, region: str, zone: str) -> list[tuple[str, Volume]] | None:
        """For each mount point, its path and the first candidate usable at that location; None if
        some mount point has none there. A volume serves one mount point only."""
        chosen: list[tuple[str, Volume]] = []
        used: set[int] = set()
        for mount in self.mounts:
            volume = next((v for name in mount["name"] if (v := self._usable(name)) is not None
                           and v.pk not in used and self._serves(v, backend_id, region, zone)), None)
            if volume is None:
                return None
            used.add(volume.pk)
            chosen.append((mount["path"], volume))
        return chosen

    def fits(self, backend_id: int, region: str, zone: str) -> bool:
        return self.pick(backend_id, region, zone) is not None

    def anywhere(self) -> bool:
        """Whether some location (a usable candidate's own) serves every mount point."""
        return any(self.fits(v.backend_id, v.region, v.availability_zone) for v in self._candidates())

    def _candidates(self) -> Iterable[Volume]:
        for mount in self.mounts:
            for name in mount["name"]:
                if (volume := self._usable(name)) is not None:
                    yield volume

    def take(self, chosen: list[tuple[str, Volume]]) -> None:
        self.taken.update(volume.pk for _, volume in chosen)

    # --- why nothing fits -----------------------------------------------------------------------

    def explain(self) -> str:
        """Each mount point, each candidate with its location, and why it is unusable."""
        lines = []
        for mount in self.mounts:
            parts = []
            for name in mount["name"]:
                volume = self.volumes.get(name)
                if volume is None:
                    parts.append(f"{name}: does not exist")
                    continue
                why = self.unusable(volume) or self._location_problem(volume, mount) or "no capacity there"
                parts.append(f"{name} ({_place(volume)}): {why}")
            lines.append(f"{mount['path']}: {', '.join(parts)}")
        return "; ".join(lines)

    def _location_problem(self, volume: Volume, mount: dict) -> str | None:
        """Why the volume's own location cannot serve the run, though the volume itself is usable."""
        spec = self.spec
        for key, value, word in (("regions", volume.region, "region"),
                                 ("availability_zones", volume.availability_zone, "zone")):
            if spec.get(key) and value and value not in spec[key]:
                return f"wrong {word} (the run may use {', '.join(spec[key])})"
        for other in self.mounts:
            if other is mount:
                continue
            usable = [v for name in other["name"] if (v := self._usable(name)) is not None and v.pk != volume.pk]
            if not any(v.backend_id == volume.backend_id and v.region == volume.region for v in usable):
                return f"wrong region ({other['path']} has no usable volume in {volume.region})"
            if not any(self._serves(v, volume.backend_id, volume.region, volume.availability_zone)
                       or (not volume.availability_zone and v.region == volume.region) for v in usable):
                return f"wrong zone ({other['path']} has no usable volume in {volume.availability_zone})"
        return None


def job_mounts(spec: dict, chosen: list[tuple[str, Volume]]) -> list[dict]:
    """What a job mounts, in the configuration's order (a job's ``volumes``): the volume chosen for
    each network mount point ``{"name", "path"}``, and each instance volume ``{"instance_path", "path"}``."""
    by_path = {path: volume.name for path, volume in chosen}
    mounts = []
    for mount in spec.get("volumes") or []:
        if "name" in mount and mount["path"] in by_path:
            mounts.append({"name": by_path[mount["path"]], "path": mount["path"]})
        elif "instance_path" in mount:
            mounts.append({"instance_path": mount["instance_path"], "path": mount["path"]})
    return mounts
