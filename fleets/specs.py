"""The dstack-compatible fleet configuration (``type: fleet``): parsing and validation, no database."""

from typing import Literal

from pydantic import model_validator

from core.configuration import (
    Env,
    Name,
    OfferFilters,
    RangeSchema,
    Resources,
    Retry,
    check,
    parsed,
    unsupported,
    validate_configuration,
)
from core.resource_specs import parse_resources
from core.specs import (
    MAX_NODES,
    SpecError,
    check_keys,
    parse_count,
    parse_int,
    parse_range,
    require_mapping,
    short_repr,
)

DEFAULT_IDLE_DURATION = 300
MAX_BLOCKS = 1024  # blocks per instance (README "Limits"); nodes are at most MAX_NODES
_BLOCKS_SCHEMA = {"anyOf": [{"type": "integer", "minimum": 1, "maximum": MAX_BLOCKS}, {"const": "auto"}]}
SSH_FLEETS = ("SSH fleets (ssh_config) are not supported: Stackyard provisions instances through its backends "
              "(sim, aws, local); give nodes and resources instead")
PLACEMENTS = ("any", "cluster")  # cluster: every instance in one zone (a cluster placement group on AWS)


def parse_fleet_spec(doc: dict) -> dict:
    """Validate a fleet document and return its normalized spec, or raise SpecError naming the bad field.

    Result: {"type": "fleet", "name", "nodes": {"min": int, "target": int, "max": int|None}, "resources",
    "backends", "regions", "availability_zones", "instance_types" (lists or None),
    "blocks": int >= 1 | "auto", "idle_duration": seconds | None (off), "spot_policy",
    "max_price": float | None, "env": {str: str}, "placement": "any" | "cluster", "retry": dict | None,
    "reservation", "tags", "backend_options"}.
    """
    return validate_configuration(FleetConfiguration, require_mapping(doc, "")).to_spec()


class FleetConfiguration(OfferFilters):
    """dstack's fleet configuration (cloud fleets; SSH fleets are refused)."""

    type: Literal["fleet"] = "fleet"
    name: Name
    nodes: parsed(lambda value, field: parse_nodes(value, field), RangeSchema)
    placement: Literal[PLACEMENTS] | None = None  # type: ignore[valid-type]
    resources: Resources | None = None
    blocks: parsed(lambda value, field: parse_blocks(value, field), _BLOCKS_SCHEMA) = 1
    retry: Retry | None = None
    env: Env = {}
    ssh_config: unsupported(SSH_FLEETS) = None

    @model_validator(mode="before")
    @classmethod
    def _not_ssh(cls, data: object) -> object:
        # First, so that an SSH fleet (which has no 'nodes') hears why, not that 'nodes' is missing.
        if isinstance(data, dict) and data.get("ssh_config") is not None:
            check(False, "ssh_config", SSH_FLEETS)
        return data

    def to_spec(self) -> dict:
        idle = self.idle_duration if "idle_duration" in self.model_fields_set else DEFAULT_IDLE_DURATION
        return {
            "type": "fleet",
            "name": self.name,
            "nodes": self.nodes,
            "resources": self.resources or parse_resources(None),
            **self.offer_filters(),
            "blocks": self.blocks,
            "idle_duration": idle,
            "env": self.env,
            "placement": self.placement or "any",
            "retry": self.retry,
            "reservation": self.reservation,
            "tags": self.tags,
            "backend_options": self.backend_options,
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
