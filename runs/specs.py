"""The dstack-compatible run configurations (``type: task`` and ``type: service``): parsing and validation."""

import posixpath
import re

from core.specs import (
    SpecError,
    check_keys,
    kind_of,
    parse_choice,
    parse_duration,
    parse_int,
    parse_name,
    parse_str,
    parse_string_list,
    require,
    require_mapping,
    short_repr,
    subfield,
)

MAX_REPLICAS = 1000  # a service's replicas (README "Limits"); a task's nodes are at most MAX_NODES
MAX_PORT = 65535
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP token (RFC 9110)
# dstack's HTTP readiness probes of a service replica (``runs.health`` counts their passes).
MAX_PROBES = 10
MAX_READY_AFTER = 1000
PROBE_TYPES = ("http",)
PROBE_METHODS = ("get", "post", "put", "delete", "patch", "head")
PROBE_FIELDS = ("type", "url", "method", "headers", "body", "timeout", "interval", "ready_after")
PROBE_DEFAULT_TIMEOUT = 10
PROBE_DEFAULT_INTERVAL = 15
STARTUP_ORDERS = ("any", "master-first", "workers-first")
STOP_CRITERIA = ("all-done", "master-done")
MIN_UTILIZATION_WINDOW = 300  # dstack: utilization_policy.time_window is at least 5m


def parse_schedule(value: object, field: str = "schedule") -> dict | None:
    """dstack's ``schedule: {cron: "0 * * * *" | [...]}``: {"cron": [str]} (UTC), or None."""
    if value is None:
        return None
    schedule = require_mapping(value, field)
    check_keys(schedule, field, ("cron",))
    crons = parse_string_list(require(schedule, "cron", subfield(field, "cron")), subfield(field, "cron"))
    if not crons:
        raise SpecError(subfield(field, "cron"), "must give at least one cron expression")
    from croniter import croniter

    for i, cron in enumerate(crons):
        if not croniter.is_valid(cron) or len(cron.split()) != 5:
            raise SpecError(f"{field}.cron[{i}]", f"invalid cron expression {short_repr(cron)}: expected five fields "
                                                  "(minute hour day-of-month month day-of-week)")
    return {"cron": crons}


def parse_utilization_policy(value: object, field: str = "utilization_policy") -> dict | None:
    """{"min_gpu_utilization": 0-100 (%), "time_window": seconds (at least 5m)}, or None."""
    if value is None:
        return None
    policy = require_mapping(value, field)
    check_keys(policy, field, ("min_gpu_utilization", "time_window"))
    window = parse_duration(require(policy, "time_window", subfield(field, "time_window")),
                            subfield(field, "time_window"))
    if window < MIN_UTILIZATION_WINDOW:
        raise SpecError(subfield(field, "time_window"), "must be at least 5m")
    return {
        "min_gpu_utilization": parse_int(require(policy, "min_gpu_utilization", subfield(field, "min_gpu_utilization")),
                                         subfield(field, "min_gpu_utilization"), minimum=0, maximum=100),
        "time_window": window,
    }


def check_network_mounts(nodes: int, mounts: list[dict]) -> None:
    """A network volume attaches to one instance at a time, so the nodes of a task cannot share one."""
    network = [i for i, mount in enumerate(mounts) if "name" in mount]
    if nodes > 1 and network:
        raise SpecError("volumes", f"volumes[{network[0]}] is a network volume, which attaches to one instance, so "
                                   f"multi-node tasks (nodes: {nodes}) cannot mount one yet; instance volumes "
                                   "('/instance/path:/path') are fine")


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


def parse_probes(value: object, field: str = "probes") -> list[dict]:
    """A service's readiness probes, at most MAX_PROBES, each with every key filled in (see parse_run_spec)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise SpecError(field, f"expected a list of probes, got {kind_of(value)}")
    if len(value) > MAX_PROBES:
        raise SpecError(field, f"at most {MAX_PROBES} probes, got {len(value)}")
    return [_parse_probe(item, f"{field}[{i}]") for i, item in enumerate(value)]


def _parse_probe(item: object, field: str) -> dict:
    probe = require_mapping(item, field)
    check_keys(probe, field, PROBE_FIELDS)
    return {
        "type": parse_choice(require(probe, "type", subfield(field, "type")), subfield(field, "type"), PROBE_TYPES),
        "url": _probe_url("/" if probe.get("url") is None else probe["url"], subfield(field, "url")),
        "method": _probe_method("get" if probe.get("method") is None else probe["method"], subfield(field, "method")),
        "headers": _probe_headers(probe.get("headers"), subfield(field, "headers")),
        "body": _probe_body(probe.get("body"), subfield(field, "body")),
        "timeout": _probe_seconds(probe.get("timeout"), subfield(field, "timeout"), PROBE_DEFAULT_TIMEOUT),
        "interval": _probe_seconds(probe.get("interval"), subfield(field, "interval"), PROBE_DEFAULT_INTERVAL),
        "ready_after": 1 if probe.get("ready_after") is None else parse_int(
            probe["ready_after"], subfield(field, "ready_after"), minimum=1, maximum=MAX_READY_AFTER),
    }


def _probe_url(value: object, field: str) -> str:
    """The path the probe asks on the replica's port: it starts with '/' (the host is the replica's)."""
    url = parse_str(value, field)
    if not url.startswith("/"):
        raise SpecError(field, f"the url must be a path starting with '/', got {short_repr(url)}")
    return url


def _probe_method(value: object, field: str) -> str:
    method = value.lower() if isinstance(value, str) else value
    return parse_choice(method, field, PROBE_METHODS)


def _probe_body(value: object, field: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise SpecError(field, f"expected a string, got {kind_of(value)}")
    return value


def _probe_seconds(value: object, field: str, default: int) -> int:
    # A zero timeout fails every probe, a zero interval probes in a tight loop.
    seconds = default if value is None else parse_duration(value, field)
    if seconds < 1:
        raise SpecError(field, "must be at least 1s")
    return seconds


def _probe_headers(value: object, field: str) -> list[dict]:
    """HTTP headers sent with a probe: [{"name", "value"}], names as HTTP allows them."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise SpecError(field, f"expected a list of {{name, value}} headers, got {kind_of(value)}")
    headers = []
    for i, item in enumerate(value):
        where = f"{field}[{i}]"
        header = require_mapping(item, where)
        check_keys(header, where, ("name", "value"))
        name = parse_str(require(header, "name", subfield(where, "name")), subfield(where, "name"))
        if not _HEADER_NAME_RE.match(name):
            raise SpecError(subfield(where, "name"), f"invalid HTTP header name {short_repr(name)}")
        text = require(header, "value", subfield(where, "value"))
        if not isinstance(text, str) or "\n" in text or "\r" in text:
            raise SpecError(subfield(where, "value"), "expected a string on one line")
        headers.append({"name": name, "value": text})
    return headers


def parse_mounts(value: object, field: str = "volumes") -> list[dict]:
    """Mount points, each container path used once: network volumes {"name": [candidates], "path"} and
    instance volumes {"instance_path", "path", "optional"}, both paths absolute and normalized."""
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
    """One mount: 'name:/path', '/instance/path:/path', {name: str | [str], path} or {instance_path, path,
    optional}."""
    if isinstance(item, str):
        source, sep, path = item.partition(":")
        if not sep:
            raise SpecError(field, f"expected 'name:/path' or '/instance/path:/path', got {short_repr(item)}")
        if source.startswith("/"):
            return {"instance_path": _absolute_path(source, field), "path": _mount_path(path, field),
                    "optional": False}
        return {"name": _volume_names(source, field), "path": _mount_path(path, field)}
    mount = require_mapping(item, field)
    if "instance_path" in mount:
        return _parse_instance_mount(mount, field)
    check_keys(mount, field, ("name", "path"))
    return {
        "name": _volume_names(require(mount, "name", f"{field}.name"), f"{field}.name"),
        "path": _mount_path(require(mount, "path", f"{field}.path"), f"{field}.path"),
    }


def _parse_instance_mount(mount: dict, field: str) -> dict:
    """dstack's instance volume: a directory of the instance mounted into the container. ``optional``: the
    run may go where instance volumes are not supported, without it."""
    if "name" in mount:
        raise SpecError(subfield(field, "name"), "give either 'name' (a network volume) or 'instance_path' "
                                                 "(an instance volume), not both")
    check_keys(mount, field, ("instance_path", "path", "optional"))
    optional = False if mount.get("optional") is None else mount["optional"]
    if not isinstance(optional, bool):
        raise SpecError(subfield(field, "optional"), f"expected a boolean, got {kind_of(optional)}")
    return {
        "instance_path": _absolute_path(require(mount, "instance_path", subfield(field, "instance_path")),
                                        subfield(field, "instance_path")),
        "path": _mount_path(require(mount, "path", subfield(field, "path")), subfield(field, "path")),
        "optional": optional,
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
    path = _absolute_path(value, field)
    if path == "/":
        raise SpecError(field, "cannot mount a volume at /")
    return path


def _absolute_path(value: object, field: str) -> str:
    """An absolute path, normalized ('/data/./x/' -> '/data/x', '//data' -> '/data')."""
    path = parse_str(value, field)
    if not path.startswith("/"):
        raise SpecError(field, f"the path must be absolute, got {short_repr(path)}")
    return posixpath.normpath("/" + path.lstrip("/"))  # normpath keeps a leading '//' (POSIX allows it a meaning)
