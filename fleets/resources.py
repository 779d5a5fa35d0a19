"""Matching machines against resource requirements, and cutting machines into blocks.

``resources`` of a machine (an offer or an instance): ``{"cpus", "memory_mib", "gpus": [{"name",
"memory_mib"}], "disk_gb"}``. ``requirements`` are the normalized ``resources`` of a spec (see
``projects.specs.parse_resources``). CPU, memory and disk requirements are minimums (a bigger
machine is fine); GPU count and GPU memory are ranges, so ``gpu: 1`` never lands on a 2-GPU share.
"""

import math
from fractions import Fraction

from fleets.specs import MAX_BLOCKS

MIB_PER_GB = 1024


def _in_range(value: float, rng: dict | None) -> bool:
    if not rng:
        return True
    low, high = rng.get("min"), rng.get("max")
    return (low is None or value >= low - 1e-9) and (high is None or value <= high + 1e-9)


def _at_least(value: float, rng: dict | None) -> bool:
    return not rng or rng.get("min") is None or value >= rng["min"] - 1e-9


def gpu_model_mismatch(resources: dict, requirements: dict) -> str | None:
    """Why the machine's GPU model does not fit (name, memory), or None; the count is checked elsewhere."""
    gpu = requirements.get("gpu") or {}
    gpus = resources.get("gpus") or []
    if not gpus:
        return None
    names = gpu.get("name")
    if names and gpus[0]["name"].upper() not in {n.upper() for n in names}:
        return f"GPU {gpus[0]['name']} is not one of {', '.join(names)}"
    if not _in_range(gpus[0]["memory_mib"] / MIB_PER_GB, gpu.get("memory")):
        return f"GPU memory {gpus[0]['memory_mib'] // MIB_PER_GB}GB is outside {_describe(gpu.get('memory'), 'GB')}"
    return None


def mismatch(resources: dict, requirements: dict) -> str | None:
    """Why a whole machine does not satisfy ``requirements``, or None when it does."""
    gpu = requirements.get("gpu") or {}
    count = len(resources.get("gpus") or [])
    if not _in_range(count, gpu.get("count")):
        return f"{count} GPU(s), wanted {_describe(gpu.get('count'))}"
    if count and (reason := gpu_model_mismatch(resources, requirements)):
        return reason
    return _share_mismatch(resources["cpus"], resources["memory_mib"] / MIB_PER_GB, resources, requirements)


def _share_mismatch(cpus: float, memory_gb: float, resources: dict, requirements: dict) -> str | None:
    if not _at_least(cpus, requirements.get("cpu")):
        return f"{cpus:g} CPUs, wanted {_describe(requirements.get('cpu'))}"
    if not _at_least(memory_gb, requirements.get("memory")):
        return f"{memory_gb:g}GB memory, wanted {_describe(requirements.get('memory'), 'GB')}"
    if not _at_least(resources.get("disk_gb", 0), requirements.get("disk")):
        return f"{resources.get('disk_gb', 0)}GB disk, wanted {_describe(requirements.get('disk'), 'GB')}"
    return None


def auto_blocks(resources: dict) -> int:
    """``blocks: auto``: one block per GPU, or per CPU when there is no GPU."""
    return max(1, len(resources.get("gpus") or []) or int(resources.get("cpus") or 1))


def total_blocks_for(resources: dict, blocks) -> int:
    """How many blocks an instance is cut into for a fleet's ``blocks`` setting (``N`` or ``auto``).

    Specs stored before ``blocks`` had a limit may hold any number: it is capped at MAX_BLOCKS so that
    an instance row (a 32-bit column on PostgreSQL) can hold it and no pass raises on it every tick.
    """
    if blocks == "auto":
        return auto_blocks(resources)
    return max(1, min(int(blocks or 1), MAX_BLOCKS))


def blocks_needed(resources: dict, total_blocks: int, requirements: dict) -> tuple[int | None, str]:
    """The smallest number of blocks whose share satisfies ``requirements`` (None and why if none does).

    CPUs, GPUs and memory are split evenly into ``total_blocks``; disk is shared. Computed, not searched:
    the work does not grow with ``total_blocks``, whatever number an instance holds.
    """
    if reason := gpu_model_mismatch(resources, requirements):
        return None, reason
    total = max(1, int(total_blocks))
    gpu_count = len(resources.get("gpus") or [])
    wanted = (requirements.get("gpu") or {}).get("count")
    # Only whole-GPU shares count: `step` blocks hold `per_step` GPUs, and `steps` of them make the machine.
    steps = math.gcd(gpu_count, total) if gpu_count else total
    step, per_step = total // steps, gpu_count // steps
    lowest, highest = _gpu_steps(per_step, steps, wanted)
    if lowest > highest:
        # Name the share nearest to what is wanted: the smallest when even it has too many GPUs, else the whole.
        too_many = per_step and wanted and wanted.get("max") is not None and per_step > wanted["max"]
        k = 1 if too_many else steps
        return None, f"{k * per_step} GPU(s) per {k * step} block(s), wanted {_describe(wanted)}"
    needed = max(_blocks_for(resources["cpus"], total, requirements.get("cpu")),
                 _blocks_for(resources["memory_mib"] / MIB_PER_GB, total, requirements.get("memory")))
    k = max(lowest, -(-needed // step))
    for blocks in (k * step, (k + 1) * step):  # the check below is in floats: one step more absorbs a rounding
        if blocks <= highest * step and _share_fits(resources, blocks, total, requirements):
            return blocks, ""
    blocks = highest * step
    return None, f"{blocks}/{total} block(s) give {_share_reason(resources, blocks, total, requirements)}"


def _gpu_steps(per_step: int, steps: int, wanted: dict | None) -> tuple[int, int]:
    """The range of step counts (1..steps) whose GPU count is within ``wanted``; empty when low > high."""
    low, high = 1, steps
    if wanted and per_step:
        if wanted.get("min") is not None:
            low = max(low, -(-int(wanted["min"]) // per_step))
        if wanted.get("max") is not None:
            high = min(high, int(wanted["max"]) // per_step)
    elif not _in_range(0, wanted):
        high = 0  # no GPU in any share, and some are wanted
    return low, high


def _blocks_for(amount: float, total: int, wanted: dict | None) -> int:
    """The fewest of ``total`` blocks whose share of ``amount`` is at least ``wanted["min"]`` (may exceed total).

    Exact (fractions), so that no float rounding or overflow creeps in whatever ``total`` an instance holds.
    """
    if not wanted or not wanted.get("min"):
        return 1
    if wanted["min"] > amount:
        return total + 1  # not even the whole machine
    return max(1, math.ceil(Fraction(wanted["min"]) * total / Fraction(amount)))


def _share_fits(resources: dict, blocks: int, total: int, requirements: dict) -> bool:
    return _share_reason(resources, blocks, total, requirements) is None


def _share_reason(resources: dict, blocks: int, total: int, requirements: dict) -> str | None:
    share = blocks / total
    return _share_mismatch(resources["cpus"] * share, resources["memory_mib"] * share / MIB_PER_GB, resources,
                           requirements)


def _describe(rng: dict | None, unit: str = "") -> str:
    if not rng:
        return "any"
    low, high = rng.get("min"), rng.get("max")
    fmt = lambda v: f"{v:g}{unit}"  # noqa: E731
    if low is not None and high is not None:
        return fmt(low) if math.isclose(low, high) else f"{fmt(low)}..{fmt(high)}"
    return f"{fmt(low)}.." if low is not None else f"..{fmt(high)}"
