"""dstack's run configurations as pydantic models: ``task``, ``service`` and ``dev-environment``.

Every field of dstack's reference is accepted. Fields with a control-plane meaning are normalized to the
keys the reconcilers read (``parse_run_spec``'s docstring lists them); fields of the workload itself go
to ``spec["workload"]`` (``runs.workload``) and reach the driver with every launch.
"""

from typing import Annotated, Any, Literal

from pydantic import Field, WithJsonSchema, model_validator

from core.configuration import (
    Commands,
    Env,
    Name,
    OffDuration,
    OfferFilters,
    RangeSchema,
    Resources,
    Retry,
    Text,
    check,
    parsed,
    unsupported,
    validate_configuration,
)
from core.resource_specs import parse_resources
from core.specs import MAX_NODES, SpecError, kind_of, parse_int, parse_name, require_mapping
from runs.groups import parse_service_replicas
from runs.specs import (
    STARTUP_ORDERS,
    STOP_CRITERIA,
    check_network_mounts,
    parse_mounts,
    parse_port,
    parse_probes,
    parse_schedule,
    parse_utilization_policy,
)
from runs.workload import (
    ChatModel,
    FilePathMapping,
    PortMapping,
    PythonVersion,
    RateLimit,
    RegistryAuth,
    RepoSpec,
    Scaling,
)

RUN_TYPES = ("task", "service", "dev-environment")
IDES = ("vscode", "cursor", "windsurf", "zed")
# What the workload is, as opposed to where, when and how long it runs: kept under spec["workload"].
WORKLOAD_FIELDS = (
    "user", "privileged", "entrypoint", "home_dir", "registry_auth", "python", "nvcc", "single_branch", "shell",
    "docker", "repos", "files", "dstack", "setup", "ports", "gateway", "strip_prefix", "model", "https", "auth",
    "rate_limits", "ide", "version",
)
_FLEET_NAMES_SCHEMA = {"type": "array", "items": {"type": "string"}}


def _fleet_names(value: object, field: str) -> list[str]:
    if not isinstance(value, list):
        raise SpecError(field, f"expected a list of fleet names, got {kind_of(value)}")
    return [parse_name(name, f"{field}[{i}]") for i, name in enumerate(value)]


Mounts = parsed(parse_mounts, {"type": "array", "items": {"anyOf": [
    {"type": "string", "examples": ["my-volume:/data", "/mnt/cache:/cache"]},
    {"type": "object", "properties": {"name": {}, "path": {}, "instance_path": {}, "optional": {}}}]}})
Nodes = parsed(parse_int, {"type": "integer", "minimum": 1, "maximum": MAX_NODES}, minimum=1, maximum=MAX_NODES)
Priority = Annotated[int, Field(ge=0, le=100)]


class RunConfiguration(OfferFilters):
    """What every run type has: dstack's BaseRunConfiguration and ProfileParams."""

    name: Name | None = None
    image: Text | None = None
    user: str | None = None
    privileged: bool = False
    entrypoint: str | None = None
    working_dir: Text | None = None
    home_dir: str | None = None
    registry_auth: RegistryAuth | None = None
    python: PythonVersion | None = None
    nvcc: bool | None = None
    single_branch: bool | None = None
    env: Env = {}
    shell: str | None = None
    resources: Resources | None = None
    priority: Priority | None = None
    volumes: Mounts = []
    docker: bool | None = None
    repos: list[RepoSpec] = []
    files: list[FilePathMapping] = []
    dstack: bool = False
    setup: Commands = []
    retry: Retry | None = None
    max_duration: OffDuration | None = None
    stop_duration: OffDuration | None = None
    max_stop_duration: OffDuration | None = None
    creation_policy: Literal["reuse", "reuse-or-create"] | None = None
    utilization_policy: parsed(parse_utilization_policy, {"type": "object", "properties": {
        "min_gpu_utilization": {"type": "integer", "minimum": 0, "maximum": 100}, "time_window": {}}}) | None = None
    startup_order: Literal[STARTUP_ORDERS] | None = None  # type: ignore[valid-type]
    stop_criteria: Literal[STOP_CRITERIA] | None = None  # type: ignore[valid-type]
    schedule: parsed(parse_schedule, {"type": "object", "properties": {"cron": {}}}) | None = None
    fleets: parsed(_fleet_names, _FLEET_NAMES_SCHEMA) | None = None
    instances: list[str | dict[str, Any]] | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_stop_duration(cls, data: Any) -> Any:
        if isinstance(data, dict):
            both = data.get("stop_duration") is not None and data.get("max_stop_duration") is not None
            check(not both, "max_stop_duration", "give only one of 'stop_duration' and 'max_stop_duration'")
        return data

    def common_spec(self, kind: str) -> dict:
        """The normalized keys every run type has (see ``parse_run_spec``)."""
        stop = self.stop_duration if self.stop_duration is not None else self.max_stop_duration
        return {
            "type": kind,
            "name": self.name,
            "nodes": 1,
            "replicas": 1,
            "commands": [],
            "image": self.image,
            "working_dir": self.working_dir,
            "env": self.env,
            "resources": self.resources or parse_resources(None),
            "volumes": self.volumes,
            "retry": self.retry,
            "stop_duration": stop,
            "max_duration": self.max_duration,
            "fleets": self.fleets,
            **self.offer_filters(),
            "port": None,
            "probes": [],
            "schedule": self.schedule,
            "utilization_policy": self.utilization_policy,
            "idle_duration": self.idle_duration,
            "startup_order": self.startup_order or "any",
            "stop_criteria": self.stop_criteria or "all-done",
            "inactivity_duration": None,
            "creation_policy": self.creation_policy or "reuse-or-create",
            "priority": self.priority or 0,
            "reservation": self.reservation,
            "tags": self.tags,
            "instances": self.instances,
            "backend_options": self.backend_options,
            "workload": self.model_dump(include=set(WORKLOAD_FIELDS) & self.model_fields_set, mode="json"),
        }

    def _commands_or_image(self, commands: list[str]) -> None:
        check(bool(commands) or self.image is not None, "commands",
              "either 'commands' or 'image' must be set (an image runs its own entrypoint)")


class _Runnable:
    """Tasks and services run ``commands``, or the image's own entrypoint (a service's replica groups
    have their own)."""

    @model_validator(mode="after")
    def _runnable(self):
        if getattr(self, "groups", None) is None and not isinstance(getattr(self, "replicas", None), list):
            self._commands_or_image(self.commands)
        return self


class TaskConfiguration(_Runnable, RunConfiguration):
    """A batch job on one or several nodes (job_num 0 is the master)."""

    type: Literal["task"] = "task"
    commands: Commands = []
    ports: list[PortMapping] = []
    nodes: Nodes | None = None
    groups: unsupported("node groups (heterogeneous multi-node tasks) are not supported yet: give 'nodes' and "
                        "one 'resources' for all of them") = None

    def to_spec(self) -> dict:
        spec = {**self.common_spec("task"), "nodes": self.nodes or 1, "commands": self.commands}
        check_network_mounts(spec["nodes"], spec["volumes"])
        return spec


class ServiceConfiguration(_Runnable, RunConfiguration):
    """A long-running replicated workload behind a port, with readiness probes."""

    type: Literal["service"] = "service"
    commands: Commands = []
    port: parsed(parse_port, {"anyOf": [{"type": "integer"}, {"type": "string", "examples": ["80:8000"]},
                                        {"type": "object"}]})
    gateway: bool | str | None = None
    strip_prefix: bool = True
    model: ChatModel | None = None
    https: bool | Literal["auto"] | None = None
    auth: bool = True
    rate_limits: list[RateLimit] = []
    probes: parsed(parse_probes, {"type": "array", "items": {"type": "object"}}) | None = None
    # Read together, from the document, by runs.groups.parse_service_replicas (see parse_run_spec).
    replicas: Annotated[Any, WithJsonSchema({"anyOf": [*RangeSchema["anyOf"], {"type": "array"}]})] = None
    groups: Annotated[Any, WithJsonSchema({"type": "array", "items": {"type": "object"}})] = None
    scaling: Annotated[Any, WithJsonSchema(Scaling.model_json_schema())] = None

    def to_spec(self) -> dict:
        return {**self.common_spec("service"), "commands": self.commands, "port": self.port,
                "probes": self.probes or []}


class DevEnvironmentConfiguration(RunConfiguration):
    """One job that runs until stopped, or until nobody has used it for ``inactivity_duration``."""

    type: Literal["dev-environment"] = "dev-environment"
    ide: Literal[IDES] | None = None  # type: ignore[valid-type]
    version: str | None = None
    init: Commands = []
    inactivity_duration: OffDuration | None = None
    ports: list[PortMapping] = []

    @model_validator(mode="after")
    def _no_entrypoint(self) -> "DevEnvironmentConfiguration":
        check(self.entrypoint is None, "entrypoint", "entrypoint is not supported for dev-environment")
        return self

    def to_spec(self) -> dict:
        return {**self.common_spec("dev-environment"), "commands": self.init,
                "inactivity_duration": self.inactivity_duration}


MODELS = {"task": TaskConfiguration, "service": ServiceConfiguration, "dev-environment": DevEnvironmentConfiguration}


def parse_run_spec(doc: dict) -> dict:
    """Validate a task, service or dev-environment document and return its normalized spec, or raise
    SpecError naming the field.

    Result: {"type", "name": str | None, "nodes": int (task; 1 otherwise), "replicas": int (service;
    1 otherwise), "commands": [str] (a dev-environment's ``init``), "image", "working_dir", "env", "resources",
    "volumes": [{"name": [str], "path": str} (a network volume and its candidates) | {"instance_path": str,
    "path": str, "optional": bool} (an instance volume)], "retry": dict | None, "stop_duration" and
    "max_duration": seconds | None (off), "fleets", "backends", "regions", "availability_zones",
    "instance_types": lists | None, "spot_policy", "max_price", "port": int | None (service only),
    "probes": [{"type": "http", "url", "method", "headers": [{"name", "value"}], "body": str | None,
    "timeout" and "interval": seconds, "ready_after": int}] (service only; [] otherwise),
    "schedule": {"cron": [str]} | None, "utilization_policy": {"min_gpu_utilization", "time_window"} | None,
    "idle_duration" and "inactivity_duration": seconds | None, "startup_order", "stop_criteria",
    "creation_policy", "priority", "reservation", "tags", "instances", "backend_options",
    "workload": {the workload fields the file gives, see runs.workload}}.
    A mount is a network one exactly when it has "name"; a task on several nodes mounts none.
    """
    doc = require_mapping(doc, "")
    kind = doc.get("type")
    if kind not in MODELS:
        raise SpecError("type", f"expected one of {', '.join(RUN_TYPES)}, got {kind!r}")
    if kind == "task" and doc.get("probes") is not None:
        raise SpecError("probes", "probes are for services only (type: service), as in dstack")
    spec = validate_configuration(MODELS[kind], doc).to_spec()
    if kind == "service":
        spec.update(parse_service_replicas(doc))
    return spec
