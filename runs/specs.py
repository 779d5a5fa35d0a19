"""The dstack-compatible run configurations (``type: task`` and ``type: service``): parsing and validation."""

import posixpath

from core.specs import (
    MAX_NODES,
    SpecError,
    check_keys,
    parse_count,
    parse_duration,
    parse_env,
    parse_int,
    parse_name,
    parse_placement,
    parse_range,
    parse_resources,
    parse_retry,
    parse_str,
    parse_string_list,
    pick_alias,
    require,
    require_mapping,
    short_repr,
    subfield,
)

RUN_TYPES = ("task", "service")
MAX_REPLICAS = 1000  # a service's replicas (README "Limits"); a task's nodes are at most MAX_NODES
MAX_PORT = 65535
COMMON_FIELDS = (
    "type",
    "name",
    "commands",
    "image",
    "env",
    "resources",
    "volumes",
    "retry",
    "stop_duration",
    "max_stop_duration",
    "max_duration",
    "fleets",
    "backends",
    "regions",
    "availability_zones",
    "instance_types",
    "spot_policy",
    "max_price",
    "working_dir",
)
TASK_FIELDS = (*COMMON_FIELDS, "nodes")
SERVICE_FIELDS = (*COMMON_FIELDS, "port", "replicas")
# dstack run fields Stackyard does not implement: refused by name rather than silently dropped.
UNSUPPORTED_COMMON_FIELDS = (
    "ports",
    "user",
    "privileged",
    "entrypoint",
    "home_dir",
    "registry_auth",
    "python",
    "nvcc",
    "docker",
    "shell",
    "single_branch",
    "repos",
    "files",
    "setup",
    "priority",
    "reservation",
    "creation_policy",
    "idle_duration",
    "utilization_policy",
    "startup_order",
    "stop_criteria",
    "schedule",
    "tags",
    "pool_name",
    "instance_name",
    "retry_policy",
    "termination_policy",
    "termination_idle_time",
)
UNSUPPORTED_SERVICE_FIELDS = (
    *UNSUPPORTED_COMMON_FIELDS,
    "gateway",
    "strip_prefix",
    "model",
    "https",
    "auth",
    "scaling",
    "rate_limits",
    "probes",
)


def parse_run_spec(doc: dict) -> dict:
    """Validate a task or service document and return its normalized spec, or raise SpecError naming the field.

    Result: {"type", "name": str | None, "nodes": int (task; 1 for services), "replicas": int (service;
    1 for tasks), "commands": [str], "image", "working_dir", "env", "resources",
    "volumes": [{"name": [str], "path": str}], "retry": dict | None, "stop_duration" and
    "max_duration": seconds | None (off), "fleets", "backends", "regions", "availability_zones",
    "instance_types": lists | None, "spot_policy", "max_price", "port": int | None (service only)}.
    """
    doc = require_mapping(doc, "")
    kind = doc.get("type")
    if kind not in RUN_TYPES:
        raise SpecError("type", f"expected one of {', '.join(RUN_TYPES)}, got {kind!r}")
    if kind == "task":
        check_keys(doc, "", TASK_FIELDS, UNSUPPORTED_COMMON_FIELDS)
    else:
        check_keys(doc, "", SERVICE_FIELDS, UNSUPPORTED_SERVICE_FIELDS)
    stop_key = pick_alias(doc, "stop_duration", "max_stop_duration")
    return {
        "type": kind,
        "name": None if doc.get("name") is None else parse_name(doc["name"], "name"),
        "nodes": 1 if doc.get("nodes") is None else parse_int(doc["nodes"], "nodes", minimum=1, maximum=MAX_NODES),
        "replicas": parse_replicas(doc.get("replicas")) if kind == "service" else 1,
        "commands": parse_commands(require(doc, "commands")),
        "image": None if doc.get("image") is None else parse_str(doc["image"], "image"),
        "working_dir": None if doc.get("working_dir") is None else parse_str(doc["working_dir"], "working_dir"),
        "env": parse_env(doc.get("env")),
        "resources": parse_resources(doc.get("resources")),
        "volumes": parse_mounts(doc.get("volumes")),
        "retry": parse_retry(doc.get("retry")),
        "stop_duration": _off_duration(doc.get(stop_key), stop_key),
        "max_duration": _off_duration(doc.get("max_duration"), "max_duration"),
        "fleets": _names(doc.get("fleets"), "fleets"),
        **parse_placement(doc),
        "port": parse_port(require(doc, "port")) if kind == "service" else None,
    }


def _off_duration(value: object, field: str) -> int | None:
    """A duration that defaults to off (None)."""
    return None if value is None else parse_duration(value, field, allow_off=True)


def _names(value: object, field: str) -> list[str] | None:
    if value is None:
        return None
    return [parse_name(name, f"{field}[{i}]") for i, name in enumerate(parse_string_list(value, field))]


def parse_commands(value: object, field: str = "commands") -> list[str]:
    """At least one shell command; a single string is one command."""
    commands = parse_string_list(value, field)
    if not commands:
        raise SpecError(field, "must list at least one command")
    return commands


def parse_replicas(value: object, field: str = "replicas") -> int:
    """A fixed number of replicas from 1 to MAX_REPLICAS (default 1). A true range means autoscaling, which is
    not supported yet."""
    if value is None:
        return 1
    if isinstance(value, list):
        raise SpecError(field, "replica groups are not supported yet")
    if isinstance(value, (str, dict)):
        replicas = parse_range(value, field, parse_count, maximum=MAX_REPLICAS)
        if replicas["min"] != replicas["max"]:
            raise SpecError(field, "autoscaling is not supported yet: give a fixed number of replicas, "
                                   f"not {short_repr(value)}")
        value = replicas["min"]
    return parse_int(value, field, minimum=1, maximum=MAX_REPLICAS)


def parse_port(value: object, field: str = "port") -> int:
    """The container port a service listens on: 8000, '8000', or dstack's '80:8000' (the container side counts)."""
    if isinstance(value, dict):
        check_keys(value, field, ("container_port", "local_port"))
        return parse_port(require(value, "container_port", subfield(field, "container_port")), field)
    if isinstance(value, str):
        container = value.rpartition(":")[2].strip()
        if not container.isdecimal() or len(container) > 5:
            raise SpecError(field, f"invalid port {short_repr(value)}: expected a number from 1 to {MAX_PORT}")
        value = int(container)
    return parse_int(value, field, minimum=1, maximum=MAX_PORT)


def parse_mounts(value: object, field: str = "volumes") -> list[dict]:
    """Network volume mount points [{"name": [candidates], "path": absolute path}], each path used once."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise SpecError(field, "expected a list of volume mounts")
    mounts, seen = [], set()
    for i, item in enumerate(value):
        mount = _parse_mount(item, f"{field}[{i}]")
        if mount["path"] in seen:
            raise SpecError(f"{field}[{i}].path", f"the path {mount['path']} is mounted twice")
        seen.add(mount["path"])
        mounts.append(mount)
    return mounts


def _parse_mount(item: object, field: str) -> dict:
    """One mount: 'name:/path' or {name: str | [str], path: /path}."""
    if isinstance(item, str):
        if item.startswith("/"):
            raise SpecError(field, "instance volumes are not supported yet: use a network volume as 'name:/path'")
        name, sep, path = item.partition(":")
        if not sep:
            raise SpecError(field, f"expected 'name:/path', got {item!r}")
        return {"name": _volume_names(name, field), "path": _mount_path(path, field)}
    mount = require_mapping(item, field)
    if "instance_path" in mount:
        raise SpecError(subfield(field, "instance_path"), "instance volumes are not supported yet")
    check_keys(mount, field, ("name", "path"))
    return {
        "name": _volume_names(require(mount, "name", f"{field}.name"), f"{field}.name"),
        "path": _mount_path(require(mount, "path", f"{field}.path"), f"{field}.path"),
    }


def _volume_names(value: object, field: str) -> list[str]:
    """Candidate volumes for one mount point, in preference order, each named once."""
    names = parse_string_list(value, field)
    if not names:
        raise SpecError(field, "must name at least one volume")
    for i, name in enumerate(names):
        parse_name(name, f"{field}[{i}]" if isinstance(value, list) else field)
    if len(set(names)) != len(names):
        raise SpecError(field, "a volume is listed twice")
    return names


def _mount_path(value: object, field: str) -> str:
    """An absolute container path other than '/', normalized so '/data/' and '/data' are the same mount point."""
    path = parse_str(value, field)
    if not path.startswith("/"):
        raise SpecError(field, f"the mount path must be absolute, got {path!r}")
    path = posixpath.normpath(path)
    if path == "/":
        raise SpecError(field, "cannot mount a volume at /")
    return path
