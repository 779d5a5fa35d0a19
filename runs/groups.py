"""Replica groups of a service (dstack's ``groups:``, or ``replicas:`` given as a list) and ranges of replicas.

A heterogeneous service is a list of groups, each with its own count, resources, commands, image and
spot policy. Every replica belongs to one group (``Job.group``); its jobs are placed with the group's
resources and launched with its commands. A plain service is one unnamed group (``Job.group == ""``).

A count may be a range (``1..4``) only with ``scaling`` (dstack's autoscaling on requests per second).
Stackyard has no gateway and so no request metrics: such a group runs its minimum and never scales on
load. The range and the scaling rules are kept in the spec, and the run's ``submitted`` event says so.

The parsers are pure (``core.specs`` helpers only) and raise ``SpecError`` naming the field
(``groups[1].name``); the rest are small reads of a normalized spec used by submit, re-apply, rollout,
retry, placement and the workload launch.
"""

import re

from core.resource_specs import parse_resources
from core.specs import (
    SPOT_POLICIES,
    SpecError,
    check_keys,
    kind_of,
    parse_choice,
    parse_count,
    parse_duration,
    parse_range,
    parse_str,
    parse_string_list,
    pick_alias,
    require,
    require_mapping,
    short_repr,
    subfield,
)
from runs.specs import MAX_REPLICAS  # a service's replicas in all, and any group's maximum

MAX_GROUPS = 100
GROUP_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")  # dstack's rule; Job.group holds 40 characters
GROUP_FIELDS = ("name", "replicas", "count", "scaling", "resources", "spot_policy", "reservation", "commands",
                "image", "python", "nvcc", "docker", "privileged", "router")
SCALING_FIELDS = ("metric", "target", "window", "scale_up_delay", "scale_down_delay")
SCALING_METRICS = ("rps",)
SCALING_WINDOWS = (30, 60, 300)  # seconds, as dstack's gateway allows them
DEFAULT_SCALE_UP_DELAY = 300
DEFAULT_SCALE_DOWN_DELAY = 600
ROUTER_TYPES = ("sglang", "dynamo")
PYTHON_VERSIONS = ("3.9", "3.10", "3.11", "3.12", "3.13", "3.14")
# dstack: these may be set at the service level or in groups, never both (precedence would be ambiguous);
# a boolean counts at the service level only when true.
SERVICE_OR_GROUP_FIELDS = ("image", "spot_policy", "reservation", "python", "docker", "privileged", "nvcc")
SERVICE_FLAGS = ("docker", "privileged", "nvcc")
# dstack: an image source at the service level excludes another kind of image source in any group.
IMAGE_SOURCES = ("image", "python", "docker", "nvcc")
EXCLUDED_SOURCES = {"image": ("python", "docker", "nvcc"), "python": ("image", "docker"),
                    "docker": ("image", "python", "nvcc"), "nvcc": ("image", "docker")}
# Workload fields a group sets for its own replicas (``spec["workload"]``, handed to the driver).
GROUP_WORKLOAD_FIELDS = ("python", "nvcc", "docker", "privileged", "router")
# What a group changes in the jobs it runs; its count and scaling rules change only how many run.
GROUP_COUNT_FIELDS = ("replicas", "replicas_max", "scaling")
# What a group's replicas take from their group instead of the service (``spec_for_group``).
GROUP_JOB_FIELDS = ("resources", "commands", "image", "spot_policy", "reservation")


# --- parsing ---------------------------------------------------------------------------------


def parse_scaling(value: object, field: str = "scaling") -> dict | None:
    """dstack's ``scaling: {metric: rps, target, window, scale_up_delay, scale_down_delay}``, durations in
    seconds; None when absent."""
    if value is None:
        return None
    scaling = require_mapping(value, field)
    check_keys(scaling, field, SCALING_FIELDS)
    metric = parse_choice(require(scaling, "metric", subfield(field, "metric")), subfield(field, "metric"),
                          SCALING_METRICS)
    target = require(scaling, "target", subfield(field, "target"))
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target < float("inf"):
        raise SpecError(subfield(field, "target"), f"expected a positive number, got {short_repr(target)}")
    window = None
    if scaling.get("window") is not None:
        window = parse_duration(scaling["window"], subfield(field, "window"))
        if window not in SCALING_WINDOWS:
            raise SpecError(subfield(field, "window"), "must be one of " + ", ".join(f"{w}s" for w in SCALING_WINDOWS))
    return {
        "metric": metric,
        "target": float(target),
        "window": window,
        "scale_up_delay": _delay(scaling, "scale_up_delay", field, DEFAULT_SCALE_UP_DELAY),
        "scale_down_delay": _delay(scaling, "scale_down_delay", field, DEFAULT_SCALE_DOWN_DELAY),
    }


def _delay(scaling: dict, key: str, field: str, default: int) -> int:
    return default if scaling.get(key) is None else parse_duration(scaling[key], subfield(field, key))


def parse_replica_count(value: object, scaling: object, field: str, scaling_field: str) -> dict:
    """A count or a range of replicas and its scaling rules: {"replicas" (the minimum: what runs),
    "replicas_max", "scaling": dict | None}. A range needs ``scaling``, and ``scaling`` needs a range
    (dstack's rules); a range's min defaults to 0, its max is required."""
    count = parse_range(value, field, parse_count, maximum=MAX_REPLICAS)
    if count["max"] is None:
        raise SpecError(field, f"the maximum number of replicas is required, got {short_repr(value)}")
    low = 0 if count["min"] is None else count["min"]
    rules = parse_scaling(scaling, scaling_field)
    if low != count["max"] and rules is None:
        raise SpecError(field, f"a range of replicas ({short_repr(value)}) needs 'scaling' (autoscaling rules), "
                               "as in dstack; or give a fixed number")
    if low == count["max"] and rules is not None:
        raise SpecError(scaling_field, "scaling needs 'replicas' to be a range, like 1..4")
    return {"replicas": low, "replicas_max": count["max"], "scaling": rules}


def parse_replica_groups(value: object, field: str = "groups") -> list[dict]:
    """The groups of a heterogeneous service, each with every key filled in (``resources``, ``image`` and
    ``spot_policy`` are None when the group does not set them: the service's apply, see
    ``parse_service_replicas``). Names default to the group's position ('0', '1', ...) and are unique."""
    if not isinstance(value, list):
        raise SpecError(field, f"expected a list of replica groups, got {kind_of(value)}")
    if not value:
        raise SpecError(field, "must list at least one replica group")
    if len(value) > MAX_GROUPS:
        raise SpecError(field, f"at most {MAX_GROUPS} replica groups, got {len(value)}")
    groups, seen = [], set()
    for i, item in enumerate(value):
        group = _parse_group(item, f"{field}[{i}]", default_name=str(i))
        if group["name"] in seen:
            raise SpecError(f"{field}[{i}].name", f"the replica group name {group['name']!r} is used twice: "
                                                  "each group needs a unique name")
        seen.add(group["name"])
        groups.append(group)
    _check_router(groups, field)
    return groups


def _parse_group(item: object, field: str, default_name: str) -> dict:
    group = require_mapping(item, field)
    check_keys(group, field, GROUP_FIELDS)
    count_key = pick_alias(group, "replicas", "count", field)
    where = subfield(field, count_key)
    return {
        "name": default_name if group.get("name") is None else _group_name(group["name"], subfield(field, "name")),
        **parse_replica_count(require(group, count_key, where), group.get("scaling"), where,
                              subfield(field, "scaling")),
        "resources": None if group.get("resources") is None else parse_resources(group["resources"],
                                                                                 subfield(field, "resources")),
        "commands": _group_commands(group.get("commands"), subfield(field, "commands")),
        "image": None if group.get("image") is None else parse_str(group["image"], subfield(field, "image")),
        "spot_policy": (None if group.get("spot_policy") is None
                        else parse_choice(group["spot_policy"], subfield(field, "spot_policy"), SPOT_POLICIES)),
        **_parse_image_source(group, field),
        "reservation": (None if group.get("reservation") is None
                        else parse_str(group["reservation"], subfield(field, "reservation"))),
        "router": _parse_router(group.get("router"), subfield(field, "router")),
    }


def _parse_image_source(group: dict, field: str) -> dict:
    """``python``, ``nvcc``, ``docker``, ``privileged`` with dstack's rules: ``image``, ``python`` and
    ``docker: true`` exclude each other, so do ``nvcc: true`` and ``docker: true``, and docker-in-docker
    needs privileged mode (``privileged: false`` with ``docker: true`` is refused)."""
    flags = {key: _optional_bool(group.get(key), subfield(field, key)) for key in ("nvcc", "docker", "privileged")}
    python = _python_version(group.get("python"), subfield(field, "python"))
    exclusive = [("image", "python", group.get("image") is not None and python is not None),
                 ("image", "docker", group.get("image") is not None and flags["docker"] is True),
                 ("python", "docker", python is not None and flags["docker"] is True),
                 ("nvcc", "docker", flags["nvcc"] is True and flags["docker"] is True)]
    for first, second, both in exclusive:
        if both:
            raise SpecError(subfield(field, second), f"'{first}' and '{second}' are mutually exclusive within a "
                                                     "replica group")
    if flags["docker"] is True and flags["privileged"] is False:
        raise SpecError(subfield(field, "privileged"), "'privileged: false' is incompatible with 'docker: true' "
                                                       "(docker-in-docker needs privileged mode)")
    return {"python": python, **flags}


def _optional_bool(value: object, field: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise SpecError(field, f"expected a boolean, got {kind_of(value)}")
    return value


def _python_version(value: object, field: str) -> str | None:
    """YAML reads ``python: 3.10`` as the number 3.1: read back as dstack does."""
    if value is None:
        return None
    if isinstance(value, float):
        value = "3.10" if f"{value}" == "3.1" else f"{value}"
    return parse_choice(value, field, PYTHON_VERSIONS)


def _parse_router(value: object, field: str) -> dict | None:
    if value is None:
        return None
    router = require_mapping(value, field)
    check_keys(router, field, ("type",))
    return {"type": parse_choice(router.get("type") or "sglang", subfield(field, "type"), ROUTER_TYPES)}


def _check_router(groups: list[dict], field: str) -> None:
    """dstack: at most one group runs the router, and that group has exactly one replica."""
    routed = [i for i, group in enumerate(groups) if group["router"] is not None]
    if len(routed) > 1:
        raise SpecError(f"{field}[{routed[1]}].router", "at most one replica group may specify 'router'")
    if routed and (groups[routed[0]]["replicas"], groups[routed[0]]["replicas_max"]) != (1, 1):
        raise SpecError(f"{field}[{routed[0]}].replicas", "a replica group with 'router' must have 'replicas: 1'")


def _group_commands(value: object, field: str) -> list[str]:
    """The group's commands; none means its image's own entrypoint (checked in ``_grouped``)."""
    return [] if value is None else parse_string_list(value, field)


def _group_name(value: object, field: str) -> str:
    if not isinstance(value, str) or not GROUP_NAME_RE.match(value):
        raise SpecError(field, f"invalid replica group name {short_repr(value)}: use 1-40 characters a-z, 0-9 and "
                               "'-', starting with a letter or a digit")
    return value


def parse_service_replicas(doc: dict) -> dict:
    """The replica fields of a service document: {"replicas": total desired, "replicas_max": int | None
    (a plain service's range), "scaling": dict | None (a plain service's), "groups": list | None}.

    ``groups`` (or ``replicas`` as a list, dstack's older form) excludes a numeric ``replicas`` and the
    top-level ``commands`` and ``scaling``; a group without ``resources``, ``image`` or ``spot_policy``
    takes the service's. At least one replica must run in all: with no request metrics, nothing would
    ever start one.
    """
    replicas = doc.get("replicas")
    if isinstance(replicas, list):
        if doc.get("groups") is not None:
            raise SpecError("groups", "give replica groups either as 'groups' or as a list in 'replicas', not both")
        return _grouped(doc, parse_replica_groups(replicas, "replicas"), "replicas")
    if doc.get("groups") is not None:
        if replicas is not None:
            raise SpecError("replicas", "'replicas' and 'groups' are mutually exclusive: give each group its "
                                        "own 'replicas'")
        return _grouped(doc, parse_replica_groups(doc["groups"], "groups"), "groups")
    count = parse_replica_count(1 if replicas is None else replicas, doc.get("scaling"), "replicas", "scaling")
    _check_total(count["replicas"], "replicas")
    return {**count, "replicas_max": count["replicas_max"] if count["scaling"] else None, "groups": None}


def _grouped(doc: dict, groups: list[dict], field: str) -> dict:
    """Check the service level against its groups and fill in what the groups inherit."""
    for key in ("commands", "scaling"):
        if doc.get(key) not in (None, []):
            raise SpecError(key, f"top-level '{key}' is not allowed with replica groups: give '{key}' in each "
                                 f"group instead")
    _check_levels(doc, groups)
    resources = parse_resources(doc.get("resources"))
    spot_policy = "on-demand" if doc.get("spot_policy") is None else doc["spot_policy"]
    for i, group in enumerate(groups):
        group["resources"] = group["resources"] or resources
        group["image"] = group["image"] or doc.get("image")
        group["spot_policy"] = group["spot_policy"] or spot_policy
        group["reservation"] = group["reservation"] or doc.get("reservation")
        if not group["commands"] and group["image"] is None:
            raise SpecError(f"{field}[{i}].commands",
                            f"replica group '{group['name']}': either 'commands' or 'image' must be set in the group, "
                            "or 'image' at the service level (an image runs its own entrypoint)")
    total = sum(group["replicas"] for group in groups)
    _check_total(total, field)
    return {"replicas": total, "replicas_max": None, "scaling": None, "groups": groups}


def _service_sets(doc: dict, key: str) -> bool:
    value = doc.get(key)
    return value is True if key in SERVICE_FLAGS else value is not None


def _check_levels(doc: dict, groups: list[dict]) -> None:
    """dstack's rules between the service and its groups: a field set in both places, or an image source
    at the service level with another kind in a group, is ambiguous."""
    for key in SERVICE_OR_GROUP_FIELDS:
        both = [group["name"] for group in groups if group[key] is not None]
        if _service_sets(doc, key) and both:
            raise SpecError(key, f"'{key}' is set both at the service level and in replica group(s) "
                                 f"{', '.join(both)}: set it in one place only")
    for key in IMAGE_SOURCES:
        if not _service_sets(doc, key):
            continue
        for other in EXCLUDED_SOURCES[key]:
            clash = [group["name"] for group in groups if group[other] is not None]
            if clash:
                raise SpecError(key, f"the service's '{key}' conflicts with '{other}' in replica group(s) "
                                     f"{', '.join(clash)}: these image sources are mutually exclusive")


def _check_total(total: int, field: str) -> None:
    if total < 1:
        raise SpecError(field, "at least one replica must run: Stackyard has no request metrics (no gateway) to "
                               "scale a service up from zero, so give a minimum of 1 or more")
    if total > MAX_REPLICAS:
        raise SpecError(field, f"at most {MAX_REPLICAS} replicas in all, got {total}")


# --- reading a normalized spec ---------------------------------------------------------------------


def group_of(spec: dict, name: str) -> dict | None:
    """The group ``name`` of a service's spec, or None (a plain service, or a group no longer there)."""
    return next((group for group in spec.get("groups") or [] if group["name"] == name), None)


def spec_for_group(spec: dict, name: str) -> dict:
    """The run's spec as the replicas of group ``name`` see it: the group's resources, commands, image,
    spot policy and reservation in place of the service's, and its python, nvcc, docker, privileged and
    router in the workload. The spec itself when there is no such group."""
    group = group_of(spec, name) if name else None
    if group is None:
        return spec
    workload = {**(spec.get("workload") or {}),
                **{key: group[key] for key in GROUP_WORKLOAD_FIELDS if group[key] is not None}}
    return {**spec, **{key: group[key] for key in GROUP_JOB_FIELDS}, "workload": workload}


def job_spec(job) -> dict:
    """The spec a job runs and is placed with (its replica group's, see ``spec_for_group``)."""
    return spec_for_group(job.run.spec, job.group)


def desired_by_group(spec: dict) -> dict[str, int]:
    """How many replicas each group wants, in the spec's order; a plain service is the group ''."""
    groups = spec.get("groups")
    if not groups:
        return {"": int(spec.get("replicas") or 1)}
    return {group["name"]: group["replicas"] for group in groups}


def replica_layout(spec: dict) -> list[tuple[int, str]]:
    """(replica number, group) of a new service's replicas: numbered in a row, group after group."""
    layout = []
    for group, count in desired_by_group(spec).items():
        layout += [(len(layout) + i, group) for i in range(count)]
    return layout


def scaled_down_message(spec: dict, group: str) -> str:
    """Why replicas of ``group`` were stopped as no longer wanted (their jobs' status message)."""
    if not spec.get("groups"):
        return f"scaled down to {int(spec.get('replicas') or 1)} replicas"
    wanted = desired_by_group(spec).get(group)
    if wanted is None:
        return f"replica group {group!r} is no longer in the service" if group else "replaced by replica groups"
    return f"scaled down to {wanted} replicas in group {group}"


def changed_groups(old: dict, new: dict) -> set[str]:
    """Groups of both specs whose jobs would run something else (not just more or fewer of them)."""
    changed = set()
    for group in new.get("groups") or []:
        before = group_of(old, group["name"])
        if before is not None and _job_fields(before) != _job_fields(group):
            changed.add(group["name"])
    return changed


def _job_fields(group: dict) -> dict:
    return {key: value for key, value in group.items() if key not in GROUP_COUNT_FIELDS}


def scaling_note(spec: dict) -> str:
    """What a service with ``scaling`` actually runs, said once at submit ('' when nothing scales)."""
    ranges = [(group["name"], group["replicas"], group["replicas_max"]) for group in spec.get("groups") or []
              if group.get("scaling")]
    if spec.get("scaling"):
        ranges.append(("", spec["replicas"], spec["replicas_max"]))
    if not ranges:
        return ""
    parts = [f"{'group ' + name + ': ' if name else ''}{low} of {low}..{high}" for name, low, high in ranges]
    return ("autoscaling is not available (no gateway, so no request metrics): running the minimum number of "
            "replicas, " + "; ".join(parts))
