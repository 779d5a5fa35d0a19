"""The sim cloud's vocabulary: its default catalogue, and validation of its config and faults.

Prices and shapes are modelled on real on-demand instances (AWS g5/g6/p4de/p5, GCP a2) so that
placement by price behaves as it would against a real cloud.
"""

import copy
import math

from backends.drivers.orphan_policy import ORPHAN_KEYS, validate_orphan_keys
from core.errors import InvalidInput

DEFAULT_REGIONS = ["eu-west-1", "us-east-1"]
ZONE_SUFFIXES = ("a", "b")
# Spot capacity in the sim costs this fraction of the on-demand price (real clouds: ~30-40%).
SPOT_PRICE_FACTOR = 0.35
CONFIG_KEYS = ("regions", "instance_types", "latency", *ORPHAN_KEYS)
INSTANCE_TYPE_KEYS = ("name", "cpus", "memory_mib", "gpus", "disk_gb", "price")
GPU_KEYS = ("name", "memory_mib")

GIB = 1024


def _gpus(name: str, count: int, memory_gib: int) -> list[dict]:
    return [{"name": name, "memory_mib": memory_gib * GIB} for _ in range(count)]


DEFAULT_INSTANCE_TYPES = [
    {"name": "cpu-4", "cpus": 4, "memory_mib": 16 * GIB, "gpus": [], "disk_gb": 100, "price": 0.17},
    {"name": "cpu-16", "cpus": 16, "memory_mib": 64 * GIB, "gpus": [], "disk_gb": 200, "price": 0.68},
    {"name": "gpu-l4-1", "cpus": 8, "memory_mib": 32 * GIB, "gpus": _gpus("L4", 1, 24), "disk_gb": 450, "price": 0.98},
    {
        "name": "gpu-a10g-1",
        "cpus": 8,
        "memory_mib": 32 * GIB,
        "gpus": _gpus("A10G", 1, 24),
        "disk_gb": 450,
        "price": 1.21,
    },
    {
        "name": "gpu-a100-1",
        "cpus": 12,
        "memory_mib": 170 * GIB,
        "gpus": _gpus("A100", 1, 80),
        "disk_gb": 1000,
        "price": 5.07,
    },
    {
        "name": "gpu-a100-8",
        "cpus": 96,
        "memory_mib": 1152 * GIB,
        "gpus": _gpus("A100", 8, 80),
        "disk_gb": 8000,
        "price": 40.97,
    },
    {
        "name": "gpu-h100-8",
        "cpus": 192,
        "memory_mib": 2048 * GIB,
        "gpus": _gpus("H100", 8, 80),
        "disk_gb": 30720,
        "price": 98.32,
    },
]


def zones_of(region: str) -> list[str]:
    """The sim gives every region the zones ``<region>a`` and ``<region>b``."""
    return [region + suffix for suffix in ZONE_SUFFIXES]


def effective_config(config: dict) -> dict:
    """A validated config with every default filled in (what the driver actually runs with)."""
    return {
        "regions": list(config.get("regions", DEFAULT_REGIONS)),
        "instance_types": copy.deepcopy(config.get("instance_types", DEFAULT_INSTANCE_TYPES)),
        "latency": float(config.get("latency", 0.0)),
    }


def validate_config(config: dict) -> dict:
    """Return a sim backend's config normalized, or raise ``InvalidInput`` naming the bad key.

    Only the keys the user gave are returned, so a backend stored with ``{}`` keeps following the
    built-in catalogue as it evolves; ``effective_config`` adds the defaults.
    """
    if not isinstance(config, dict):
        raise _invalid("config", "the sim config must be an object")
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise _invalid(unknown[0], f"unknown sim config key {unknown[0]!r}; allowed: {', '.join(CONFIG_KEYS)}")
    cleaned = {}
    if "regions" in config:
        cleaned["regions"] = _regions(config["regions"])
    if "instance_types" in config:
        cleaned["instance_types"] = _instance_types(config["instance_types"])
    if "latency" in config:
        cleaned["latency"] = _latency(config["latency"])
    cleaned.update(validate_orphan_keys(config))
    return cleaned


def _invalid(key: str, detail: str) -> InvalidInput:
    return InvalidInput(detail, code="invalid_config", field=key)


def _is_number(value) -> bool:
    # bool is an int subclass; ``true`` is never a meaningful number in a config.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_name(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _regions(value) -> list[str]:
    if not isinstance(value, list) or not value:
        raise _invalid("regions", "regions must be a non-empty list of region names")
    for i, region in enumerate(value):
        if not _is_name(region):
            raise _invalid(f"regions[{i}]", f"regions[{i}] must be a non-empty string")
    if len(set(value)) != len(value):
        raise _invalid("regions", "regions must not repeat a region")
    return list(value)


def _latency(value) -> float:
    if not _is_number(value) or value < 0:
        raise _invalid("latency", "latency must be a number of seconds >= 0")
    return float(value)


def _instance_types(value) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise _invalid("instance_types", "instance_types must be a non-empty list of instance types")
    types = [_instance_type(item, f"instance_types[{i}]") for i, item in enumerate(value)]
    names = [t["name"] for t in types]
    if len(set(names)) != len(names):
        raise _invalid("instance_types", "instance_types must not repeat a name")
    return types


def _exact_keys(item, keys: tuple[str, ...], where: str) -> None:
    if not isinstance(item, dict):
        raise _invalid(where, f"{where} must be an object with keys {', '.join(keys)}")
    for key in keys:
        if key not in item:
            raise _invalid(f"{where}.{key}", f"{where}.{key} is required")
    extra = sorted(set(item) - set(keys))
    if extra:
        raise _invalid(f"{where}.{extra[0]}", f"{where}.{extra[0]} is not a known key; allowed: {', '.join(keys)}")


def _instance_type(item, where: str) -> dict:
    _exact_keys(item, INSTANCE_TYPE_KEYS, where)
    if not _is_name(item["name"]):
        raise _invalid(f"{where}.name", f"{where}.name must be a non-empty string")
    for key in ("cpus", "memory_mib", "disk_gb"):
        if not _is_positive_int(item[key]):
            raise _invalid(f"{where}.{key}", f"{where}.{key} must be a positive integer")
    if not _is_number(item["price"]) or item["price"] < 0:
        raise _invalid(f"{where}.price", f"{where}.price must be a number >= 0 (USD per hour)")
    if not isinstance(item["gpus"], list):
        raise _invalid(f"{where}.gpus", f"{where}.gpus must be a list (empty for CPU-only types)")
    gpus = [_gpu(gpu, f"{where}.gpus[{i}]") for i, gpu in enumerate(item["gpus"])]
    return {**{k: item[k] for k in INSTANCE_TYPE_KEYS}, "price": float(item["price"]), "gpus": gpus}


def _gpu(item, where: str) -> dict:
    _exact_keys(item, GPU_KEYS, where)
    if not _is_name(item["name"]):
        raise _invalid(f"{where}.name", f"{where}.name must be a non-empty string")
    if not _is_positive_int(item["memory_mib"]):
        raise _invalid(f"{where}.memory_mib", f"{where}.memory_mib must be a positive integer")
    return {"name": item["name"], "memory_mib": item["memory_mib"]}


# --- faults ----------------------------------------------------------------------------------------


def _is_flag(value) -> bool:
    return isinstance(value, bool)


def _is_exit_status(value) -> bool:
    # A crash that exits 0 would be reported as a failure with a success status: refuse it.
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 255


def _is_rate(value) -> bool:
    return _is_number(value) and 0 < value <= 1


def _is_instance_name(value) -> bool:
    return _is_name(value) and len(value) <= 80


MAX_DETACH_POLLS = 1000
MAX_INACTIVE_SECONDS = 366 * 24 * 3600


def _is_percent(value) -> bool:
    return _is_number(value) and 0 <= value <= 100


def _is_inactive_seconds(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_INACTIVE_SECONDS


def _is_poll_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_DETACH_POLLS


# kind -> {key: (check, what the value must be)}; every key is required and no other key is allowed.
FAULT_SCHEMAS: dict[str, dict[str, tuple]] = {
    # An unforced detach never completes; a forced one completes if forced_ok, else it is refused.
    "stuck_detach": {"volume": (_is_name, "a volume name"), "forced_ok": (_is_flag, "true or false")},
    # is_volume_detached answers False to the first ``polls`` asks after the detach request.
    "slow_detach": {"volume": (_is_name, "a volume name"),
                    "polls": (_is_poll_count, f"an integer 1..{MAX_DETACH_POLLS}")},
    "stuck_attach": {"volume": (_is_name, "a volume name")},
    # Instance creates in the region (only in ``availability_zone`` if given) get NoCapacityError.
    "no_capacity": {"region": (_is_name, "a region name")},
    # Volume creates fail for good (only those of ``volume`` if given).
    "fail_volume_create": {},
    "crash_job": {"job": (_is_name, "a job name"), "exit_status": (_is_exit_status, "an exit status 1..255")},
    # The job's readiness probes fail while the fault is there (it keeps running); clearing it lets them pass.
    "probe_fail": {"job": (_is_name, "a job name")},
    "interrupt_instance": {"instance": (_is_name, "an instance name")},
    "api_errors": {"rate": (_is_rate, "a probability, 0 < rate <= 1")},
    # The running job reports this mean GPU utilization (%) while the fault is there (None without one).
    "gpu_utilization": {"job": (_is_name, "a job name"), "percent": (_is_percent, "a number 0..100")},
    # Nobody is attached to the running job: it reports ``seconds`` of inactivity when the fault is added,
    # growing with time from then on (None without one: the sim has no sessions to count).
    "inactive": {"job": (_is_name, "a job name"),
                 "seconds": (_is_inactive_seconds, f"an integer number of seconds 0..{MAX_INACTIVE_SECONDS}")},
    # Adding it plants at once a running, tagged VM the database does not know (sim_faults.add_fault).
    "orphan_instance": {"region": (_is_name, "one of the backend's regions")},
}
# kind -> {key: (check, what the value must be)} of the keys a fault may leave out.
OPTIONAL_FAULT_KEYS: dict[str, dict[str, tuple]] = {
    "orphan_instance": {"name": (_is_instance_name, "an instance name of at most 80 characters")},
    "no_capacity": {"availability_zone": (_is_name, "a zone name")},
    "fail_volume_create": {"volume": (_is_name, "a volume name")},
}


def validate_fault(payload: dict) -> dict:
    """Return the fault as ``{"kind": ..., **params}`` or raise ``InvalidInput`` naming the problem."""
    if not isinstance(payload, dict):
        raise InvalidInput("a fault must be an object with a 'kind'", code="invalid_fault")
    kind = payload.get("kind")
    if kind not in FAULT_SCHEMAS:
        kinds = ", ".join(FAULT_SCHEMAS)
        raise InvalidInput(f"unknown fault kind {kind!r}; kinds: {kinds}", code="invalid_fault", field="kind")
    required, optional = FAULT_SCHEMAS[kind], OPTIONAL_FAULT_KEYS.get(kind, {})
    schema = {**required, **optional}
    params = {key: value for key, value in payload.items() if key != "kind"}
    if missing := sorted(required.keys() - params.keys()):
        raise InvalidInput(f"fault {kind} needs {missing[0]!r}", code="invalid_fault", field=missing[0])
    if extra := sorted(params.keys() - schema.keys()):
        detail = f"fault {kind} has no key {extra[0]!r}; keys: {', '.join(schema)}"
        raise InvalidInput(detail, code="invalid_fault", field=extra[0])
    for key, (check, description) in schema.items():
        if key in params and not check(params[key]):
            detail = f"fault {kind}: {key!r} must be {description}, not {params[key]!r}"
            raise InvalidInput(detail, code="invalid_fault", field=key)
    # A zone outside the region would be a fault that silently never fires.
    if (zone := params.get("availability_zone")) is not None and zone not in zones_of(params["region"]):
        detail = f"fault {kind}: availability_zone {zone!r} is not a zone of {params['region']!r}"
        raise InvalidInput(detail, code="invalid_fault", field="availability_zone")
    return {"kind": kind, **params}
