"""What the ``local`` driver knows about this machine: its resources, its processes and its files.

* Resources: CPUs (``os.cpu_count``), memory (``/proc/meminfo``, else ``sysconf``), GPUs from
  ``nvidia-smi`` when it is installed (none otherwise, never an error), the disk holding the data dir.
  They are read at most once a minute per process: placement asks for offers often.
* Processes: on Linux, ``/proc`` tells a live process from a zombie (a killed job whose parent has not
  reaped it yet still answers ``kill(pid, 0)``) and gives each process a start time, so a pid reused by
  another program is never taken for a job. Elsewhere ``kill(pid, 0)`` is the best answer there is.
* Files: names made safe for the file system, JSON written atomically.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

logger = logging.getLogger(__name__)

HAS_PROC = os.path.isdir("/proc/self")
NVIDIA_SMI_QUERY = ["--query-gpu=name,memory.total", "--format=csv,noheader"]
RESOURCES_TTL_SECONDS = 60
# Vendor words that GPU names carry and that users do not write (`gpu: A100`, not `NVIDIA A100-SXM4-80GB`).
_GPU_NOISE = {"NVIDIA", "TESLA", "GEFORCE", "QUADRO"}
# Ids and names that become file names: no separators, no dot-dot, bounded.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_cache: dict[str, tuple[float, dict]] = {}


# --- files ----------------------------------------------------------------------------------------


def safe_part(text: str) -> str:
    """``text`` if it is a safe file name, else a stable digest of it."""
    if SAFE_NAME.fullmatch(text) and ".." not in text:
        return text
    return "h" + uuid.uuid5(uuid.NAMESPACE_URL, text).hex


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` atomically: readers see the old file or the new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``, or None if there is no such file."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


# --- resources ------------------------------------------------------------------------------------


def machine_resources(path: Path) -> dict:
    """``{"cpus", "memory_mib", "gpus", "disk_gb"}`` of this machine; disk is that of ``path`` (or of its
    nearest existing parent)."""
    key = str(path)
    cached = _cache.get(key)
    if cached is not None and time.monotonic() - cached[0] < RESOURCES_TTL_SECONDS:
        return cached[1]
    while not path.exists() and path != path.parent:
        path = path.parent
    resources = {"cpus": os.cpu_count() or 1, "memory_mib": memory_mib(), "gpus": gpus(),
                 "disk_gb": shutil.disk_usage(path).total // 1024**3}
    _cache[key] = (time.monotonic(), resources)
    return resources


def memory_mib() -> int:
    """Total memory in MiB."""
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 1024**2
    match = re.search(r"^MemTotal:\s+(\d+)\s*kB", meminfo, re.MULTILINE)
    return int(match.group(1)) // 1024 if match else 0


def gpus() -> list[dict]:
    """``[{"name", "memory_mib"}]`` from ``nvidia-smi``; [] without it, or when it fails (logged)."""
    command = shutil.which("nvidia-smi")
    if command is None:
        return []
    try:
        out = subprocess.run([command, *NVIDIA_SMI_QUERY], capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError) as err:
        logger.warning("nvidia-smi failed, offering no GPU: %s", err)
        return []
    return parse_nvidia_smi(out.stdout)


def parse_nvidia_smi(text: str) -> list[dict]:
    """GPUs from ``nvidia-smi --query-gpu=name,memory.total --format=csv,noheader`` lines
    (``NVIDIA A100-SXM4-80GB, 81920 MiB``)."""
    found = []
    for line in text.splitlines():
        name, _, memory = line.rpartition(",")
        match = re.match(r"\s*(\d+)", memory)
        if name.strip() and match:
            found.append({"name": gpu_model(name), "memory_mib": int(match.group(1))})
    return found


def gpu_model(raw: str) -> str:
    """The model name users write: ``NVIDIA A100-SXM4-80GB`` -> ``A100``, ``NVIDIA GeForce RTX 4090`` ->
    ``RTX4090``, ``Tesla T4`` -> ``T4``, ``NVIDIA H100 80GB HBM3`` -> ``H100``."""
    words = [w for w in raw.replace("-", " ").split() if w.upper() not in _GPU_NOISE]
    if not words:
        return raw.strip()
    if words[0].upper() in ("RTX", "GTX") and len(words) > 1:
        return words[0] + words[1]
    return words[0]


# --- processes -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ProcessInfo:
    """One process as ``/proc/<pid>/stat`` shows it; ``starttime`` is in clock ticks since boot."""

    state: str
    pgrp: int
    starttime: str


def boot_id() -> str:
    """This boot's id ("" where the system has none): a job recorded under another boot is gone."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_info(pid: int) -> ProcessInfo | None:
    """The process ``pid`` (zombies included), or None if there is none or ``/proc`` is missing."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    return ProcessInfo(state=fields[0], pgrp=int(fields[2]), starttime=fields[19])


def start_time(pid: int) -> str:
    """The start time of ``pid`` ("" when it cannot be known)."""
    info = process_info(pid)
    return info.starttime if info else ""


def is_running(pid: int, starttime: str) -> bool:
    """True while the process ``pid`` that started at ``starttime`` runs (a zombie has ended)."""
    if HAS_PROC:
        info = process_info(pid)
        return info is not None and info.state != "Z" and (not starttime or info.starttime == starttime)
    try:
        os.waitpid(pid, os.WNOHANG)  # reaps it if it is our own child, so that kill() below says no
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owns_group(pgid: int, starttime: str, boot: str) -> bool:
    """True if the process group ``pgid`` can still be the one our leader (started at ``starttime``)
    made: same boot, and its pid not taken by another process. The kernel does not reuse a pid while
    a group of that id has members, so a group whose leader is gone is still ours."""
    if boot and boot != boot_id():
        return False
    info = process_info(pgid)
    return info is None or not starttime or info.starttime == starttime


def live_groups(pgids: set[int]) -> set[int]:
    """Those of ``pgids`` that still have a live (non-zombie) member."""
    if not pgids:
        return set()
    if not HAS_PROC:
        return {pgid for pgid in pgids if _group_exists(pgid)}
    alive = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (info := process_info(int(entry))) is not None:
            if info.pgrp in pgids and info.state != "Z":
                alive.add(info.pgrp)
    return alive


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_group(pgid: int, sig: int) -> None:
    """Send ``sig`` to the group; a group already gone is not an error."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def wait_for_groups(pgids: set[int], seconds: float) -> set[int]:
    """Wait up to ``seconds`` for the groups to end; return those still alive."""
    deadline = time.monotonic() + seconds
    alive = live_groups(pgids)
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = live_groups(alive)
    return alive
