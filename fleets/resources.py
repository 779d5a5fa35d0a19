"""Matching machines against resource requirements, and cutting machines into blocks.

``resources`` of a machine (an offer or an instance): ``{"cpus", "memory_mib", "gpus": [{"name",
"memory_mib"}], "disk_gb"}``. ``requirements`` are the normalized ``resources`` of a spec (see
``projects.specs.parse_resources``). CPU, memory and disk requirements are minimums (a bigger
machine is fine); GPU count and GPU memory are ranges, so ``gpu: 1`` never lands on a 2-GPU share.
"""

import math

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
    """How many blocks an instance is cut into for a fleet's ``blocks`` setting (``N`` or ``auto``)."""
    return auto_blocks(resources) if blocks == "auto" else int(blocks or 1)


def blocks_needed(resources: dict, total_blocks: int, requirements: dict) -> tuple[int | None, str]:
    """The smallest number of blocks whose share satisfies ``requirements`` (None and why if none does).

    CPUs, GPUs and memory are split evenly into ``total_blocks``; disk is shared.
    """
    if reason := gpu_model_mismatch(resources, requirements):
        return None, reason
    gpu_count = len(resources.get("gpus") or [])
    wanted_gpus = (requirements.get("gpu") or {}).get("count")
    last_reason = "no share fits"
    for blocks in range(1, total_blocks + 1):
        share = blocks / total_blocks
        gpus = gpu_count * share
        if gpus != int(gpus):
            continue  # GPUs are not divisible: only whole-GPU shares count
        if not _in_range(int(gpus), wanted_gpus):
            last_reason = f"{int(gpus)} GPU(s) per {blocks} block(s), wanted {_describe(wanted_gpus)}"
            if wanted_gpus and wanted_gpus.get("max") is not None and gpus > wanted_gpus["max"]:
                break
            continue
        reason = _share_mismatch(resources["cpus"] * share, resources["memory_mib"] * share / MIB_PER_GB,
                                 resources, requirements)
        if reason is None:
            return blocks, ""
        last_reason = f"{blocks}/{total_blocks} block(s) give {reason}"
    return None, last_reason


def _describe(rng: dict | None, unit: str = "") -> str:
    if not rng:
        return "any"
    low, high = rng.get("min"), rng.get("max")
    fmt = lambda v: f"{v:g}{unit}"  # noqa: E731
    if low is not None and high is not None:
        return fmt(low) if math.isclose(low, high) else f"{fmt(low)}..{fmt(high)}"
    return f"{fmt(low)}.." if low is not None else f"..{fmt(high)}"
