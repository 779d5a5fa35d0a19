"""dstack's ``resources``: cpu, memory, shm_size, gpu (``24GB..``, ``A100:2``, ``nvidia:2``) and disk, read into
normalized ranges with dstack's defaults filled in. Pure functions, like the rest of ``core.specs``."""

import re

from core.specs import (
    MAX_CPUS,
    MAX_GPUS,
    MAX_MEMORY_GB,
    SpecError,
    check_keys,
    kind_of,
    parse_choice,
    parse_count,
    parse_range,
    parse_size,
    parse_string_list,
    require,
    require_mapping,
    subfield,
)

_COUNT_RE = re.compile(r"^\d*(?:\.\.\d*)?$")
_GPU_MEMORY_RE = re.compile(r"\d\s*[kmgt]i?b", re.IGNORECASE)
_GPU_NAMES_RE = re.compile(r"^[A-Za-z][\w-]*(?:,[A-Za-z][\w-]*)*$")
GPU_VENDORS = ("nvidia", "amd", "intel", "google", "tenstorrent")
CPU_ARCHS = ("x86", "arm")

def default_gpu() -> dict:
    """No GPU required."""
    return {"count": {"min": 0, "max": None}, "name": None, "memory": None, "vendor": None}


def parse_resources(value: object, field: str = "resources") -> dict:
    """Normalized resources: cpu and gpu counts, memory/disk/shm_size in GB, dstack's defaults filled in."""
    spec = require_mapping({} if value is None else value, field)
    check_keys(spec, field, ("cpu", "memory", "gpu", "disk", "shm_size"))
    memory, disk, shm = spec.get("memory"), spec.get("disk"), spec.get("shm_size")
    return {
        "cpu": _parse_cpu(spec.get("cpu"), subfield(field, "cpu")),
        "memory": {"min": 8.0, "max": None} if memory is None else _memory_range(memory, f"{field}.memory"),
        "gpu": default_gpu() if spec.get("gpu") is None else _parse_gpu(spec["gpu"], subfield(field, "gpu")),
        "disk": _parse_disk(disk, subfield(field, "disk")),
        "shm_size": None if shm is None else parse_size(shm, subfield(field, "shm_size"), MAX_MEMORY_GB),
    }


def _memory_range(value: object, field: str) -> dict:
    """A memory range in GB (of the machine or of a GPU), at most MAX_MEMORY_GB."""
    return parse_range(value, field, parse_size, maximum=MAX_MEMORY_GB, unit="GB")


def _gpu_count(value: object, field: str) -> dict:
    """A GPU count range, at most MAX_GPUS."""
    return parse_range(value, field, parse_count, maximum=MAX_GPUS)


def _parse_cpu(value: object, field: str) -> dict:
    """{"min", "max"} CPU count; "arch" is added only when the configuration names one (x86:4.., arm)."""
    if value is None:
        return {"min": 2, "max": None}
    arch, count = None, None
    if isinstance(value, dict):
        check_keys(value, field, ("arch", "count"))
        arch, count = value.get("arch"), value.get("count")
    elif isinstance(value, str) and value.split(":")[0].strip().lower() in CPU_ARCHS:
        arch, _, count = (part.strip() or None for part in value.partition(":"))
    else:
        count = value
    result = {"min": 2, "max": None} if count is None else parse_range(count, field, parse_count, maximum=MAX_CPUS)
    if arch is not None:
        result["arch"] = parse_choice(str(arch).lower(), subfield(field, "arch"), CPU_ARCHS)
    return result


def _parse_disk(value: object, field: str) -> dict:
    """Disk size range in GB; the {size: ...} mapping form is accepted too."""
    if value is None:
        return {"min": 100.0, "max": None}
    if isinstance(value, dict):
        check_keys(value, field, ("size",))
        return parse_range(require(value, "size", subfield(field, "size")), subfield(field, "size"), parse_size)
    return parse_range(value, field, parse_size)


def _gpu_spec(count=None, name=None, memory=None, vendor=None) -> dict:
    """A GPU requirement; naming a GPU (by name, memory or vendor) without a count means exactly one."""
    count = count or {"min": 1, "max": 1}
    if count["min"] is None:
        count = {"min": 0, "max": count["max"]}
    return {"count": count, "name": name, "memory": memory, "vendor": vendor}


def _parse_gpu(value: object, field: str) -> dict:
    """The GPU requirement from any of dstack's forms: 2, '2..', 'A100:2', 'amd:MI300X:8', '24GB..80GB', mapping."""
    if isinstance(value, dict):
        return _parse_gpu_mapping(value, field)
    if isinstance(value, int) and not isinstance(value, bool):
        return _gpu_spec(count=_gpu_count(value, field))
    if not isinstance(value, str) or not value.strip():
        raise SpecError(field, f"expected a GPU spec like A100:2 or 24GB.., got {kind_of(value)}")
    parts: dict = {}
    for token in (t.strip() for t in value.split(":")):
        kind, parsed = _parse_gpu_token(token, value, field)
        if kind in parts:
            raise SpecError(field, f"invalid GPU spec {value!r}: the {kind} is given twice ('{token}')")
        parts[kind] = parsed
    return _gpu_spec(**parts)


def _parse_gpu_token(token: str, value: str, field: str) -> tuple[str, object]:
    """Classify one ':'-separated part of a GPU spec as vendor, count, memory or names."""
    if token.lower() in GPU_VENDORS:
        return "vendor", token.lower()
    if token and token != ".." and _COUNT_RE.match(token):
        return "count", _gpu_count(token, field)
    if _GPU_MEMORY_RE.search(token):
        return "memory", _memory_range(token, field)
    if _GPU_NAMES_RE.match(token):
        return "name", _gpu_names(token.split(","), field)
    raise SpecError(
        field,
        f"invalid GPU spec {value!r}: cannot read '{token}' as a vendor, GPU names (A100,H100), "
        "a count (2, 1..4) or a memory size (24GB..)",
    )


def _gpu_names(names: list, field: str) -> list[str]:
    """GPU model names, upper-cased so that matching against a catalogue does not depend on case."""
    result = []
    for name in parse_string_list(names, field):
        if not _GPU_NAMES_RE.match(name) or "," in name:
            raise SpecError(field, f"invalid GPU name {name!r}")
        if name.upper() not in result:
            result.append(name.upper())
    return result


def _parse_gpu_mapping(value: dict, field: str) -> dict:
    """The {name, count, memory, vendor} form of a GPU requirement."""
    check_keys(value, field, ("name", "count", "memory", "vendor"), ("total_memory", "compute_capability"))
    parts = {}
    if value.get("name") is not None:
        parts["name"] = _gpu_names(value["name"], subfield(field, "name"))
    if value.get("count") is not None:
        parts["count"] = _gpu_count(value["count"], subfield(field, "count"))
    if value.get("memory") is not None:
        parts["memory"] = _memory_range(value["memory"], subfield(field, "memory"))
    if value.get("vendor") is not None:
        vendor = value["vendor"].lower() if isinstance(value["vendor"], str) else value["vendor"]
        parts["vendor"] = parse_choice(vendor, subfield(field, "vendor"), GPU_VENDORS)
    return _gpu_spec(**parts)


