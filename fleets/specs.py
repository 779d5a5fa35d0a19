"""The dstack-compatible fleet configuration (``type: fleet``): parsing and validation, no database."""

from core.specs import (
    MAX_NODES,
    SpecError,
    check_keys,
    check_type,
    parse_choice,
    parse_count,
    parse_int,
    parse_duration,
    parse_env,
    parse_name,
    parse_placement,
    parse_range,
    parse_resources,
    require,
    require_mapping,
    short_repr,
)

DEFAULT_IDLE_DURATION = 300
PLACEMENTS = ("any", "cluster")  # cluster: every instance in one zone (a cluster placement group on AWS)
MAX_BLOCKS = 1024  # blocks per instance (README "Limits"); nodes are at most MAX_NODES

FLEET_FIELDS = (
    "type",
    "name",
    "nodes",
    "resources",
    "blocks",
    "idle_duration",
    "env",
    "backends",
    "regions",
    "availability_zones",
    "instance_types",
    "spot_policy",
    "max_price",
    "placement",
)
# dstack fleet fields Stackyard does not implement: refused by name rather than silently dropped.
UNSUPPORTED_FLEET_FIELDS = (
    "ssh_config",
    "reservation",
    "retry",
    "tags",
    "termination_policy",
    "termination_idle_time",
)


def parse_fleet_spec(doc: dict) -> dict:
    """Validate a fleet document and return its normalized spec, or raise SpecError naming the bad field.

    Result: {"type": "fleet", "name", "nodes": {"min": int, "max": int|None}, "resources",
    "backends", "regions", "availability_zones", "instance_types" (lists or None),
    "blocks": int >= 1 | "auto", "idle_duration": seconds | None (off), "spot_policy",
    "max_price": float | None, "env": {str: str}}.
    """
    doc = require_mapping(doc, "")
    check_type(doc, "fleet")
    check_keys(doc, "", FLEET_FIELDS, UNSUPPORTED_FLEET_FIELDS)
    idle = doc.get("idle_duration")
    return {
        "type": "fleet",
        "name": parse_name(require(doc, "name"), "name"),
        "nodes": parse_nodes(require(doc, "nodes")),
        "resources": parse_resources(doc.get("resources")),
        **parse_placement(doc),
        "blocks": parse_blocks(doc.get("blocks")),
        "idle_duration": DEFAULT_IDLE_DURATION if idle is None else parse_duration(idle, "idle_duration", True),
        "env": parse_env(doc.get("env")),
        "placement": parse_choice(doc.get("placement") or "any", "placement", PLACEMENTS),
    }


def parse_nodes(value: object, field: str = "nodes") -> dict:
    """{"min": int, "target": int, "max": int | None} from N, 'min..max', 'min..', '..max' (a missing min is 0)
    or dstack's {min, target, max}, each at most MAX_NODES. ``target`` (default min) is how many instances the
    fleet provisions at first; it keeps at least ``min`` and may grow to ``max``."""
    if isinstance(value, dict):
        check_keys(value, field, ("min", "target", "max"))
        target = value.get("target")
        bounds = {k: value[k] for k in ("min", "max") if value.get(k) is not None}
        nodes = parse_range(bounds or {"min": 0}, field, parse_count, maximum=MAX_NODES)
        if target is not None:
            target = parse_int(target, f"{field}.target", minimum=0, maximum=MAX_NODES)
    else:
        nodes, target = parse_range(value, field, parse_count, maximum=MAX_NODES), None
    if nodes["min"] is None:
        nodes["min"] = 0
    if target is None:
        target = nodes["min"]
    if target < nodes["min"] or (nodes["max"] is not None and target > nodes["max"]):
        raise SpecError(f"{field}.target", f"must be between min ({nodes['min']}) and max "
                                           f"({'unbounded' if nodes['max'] is None else nodes['max']}), got {target}")
    nodes["target"] = target
    return nodes


def parse_blocks(value: object, field: str = "blocks") -> int | str:
    """The number of blocks each instance is split into: an int from 1 to MAX_BLOCKS or 'auto' (default 1)."""
    if value is None:
        return 1
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_BLOCKS:
        raise SpecError(field, f"must be 'auto' or an integer of at least 1 and at most {MAX_BLOCKS}, "
                               f"got {short_repr(value)}")
    return value
