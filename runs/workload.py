"""The parts of a run configuration that describe the workload itself, not where or when it runs.

``python``, ``image``, ``entrypoint``, ``ports``, ``files``, ``repos``, ``registry_auth``, ``model``,
``rate_limits``, ``ide``... Stackyard validates them as dstack does, stores them in the run's spec under
``workload`` and hands them to the driver with every launch (``JobLaunch.workload``); the API shows them,
``registry_auth.password`` excepted (``redacted``).
"""

import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from core.configuration import ConfigurationModel, check

PYTHON_VERSIONS = ("3.9", "3.10", "3.11", "3.12", "3.13", "3.14")
_PORT_RE = re.compile(r"^(?:(\d+|\*):)?(\d+)$")
ValidPort = Annotated[int, Field(ge=1, le=65535)]


def _python_version(value: Any) -> Any:
    """YAML reads ``python: 3.10`` as the number 3.1: read it back as dstack does."""
    if isinstance(value, float):
        text = f"{value}"
        return "3.10" if text == "3.1" else text
    return value


PythonVersion = Annotated[Literal[PYTHON_VERSIONS], BeforeValidator(_python_version)]  # type: ignore[valid-type]


class PortMapping(ConfigurationModel):
    """``8080`` (the same port on both sides), ``'80:8080'``, ``'*:8080'`` (any local port) or the mapping."""

    local_port: ValidPort | None = None
    container_port: ValidPort

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return {"local_port": value, "container_port": value}
        if isinstance(value, str):
            match = _PORT_RE.match(value.strip())
            check(match is not None, "", f"invalid port mapping {value[:40]!r}: expected 8080, '80:8080' or "
                                         "'*:8080'")
            local, container = match.groups()
            local_port = int(container) if local is None else (None if local == "*" else int(local))
            return {"local_port": local_port, "container_port": int(container)}
        return value


class RepoSpec(ConfigurationModel):
    """A Git repo checked out into the container: ``url`` or ``local_path`` (as a string: 'url[:path]')."""

    local_path: str | None = None
    url: str | None = None
    branch: str | None = None
    hash: str | None = None
    path: str = "."
    if_exists: Literal["error", "skip"] = "error"

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        parts = value.split(":")
        is_url = len(parts) > 1 and ("@" in parts[0] or parts[1].startswith("//"))
        if is_url:
            parts = [f"{parts[0]}:{parts[1]}", *parts[2:]]
        check(len(parts) <= 2, "", f"invalid repo {value[:60]!r}: expected 'url_or_path[:container_path]'")
        key = "url" if is_url else "local_path"
        return {key: parts[0], **({"path": parts[1]} if len(parts) == 2 else {})}

    @model_validator(mode="after")
    def _one_source(self) -> "RepoSpec":
        check(bool(self.local_path) != bool(self.url), "", "give exactly one of 'url' and 'local_path'")
        return self


class FilePathMapping(ConfigurationModel):
    """A file or folder of the user's machine copied into the container: 'local[:path]' or the mapping."""

    local_path: str = Field(min_length=1)
    path: str = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        local, sep, path = value.partition(":")
        return {"local_path": local, "path": path if sep else local}


class RegistryAuth(ConfigurationModel):
    """Credentials for a private image. Write-only: the API shows the username, never the password."""

    username: str = Field(min_length=1)
    password: str = Field(min_length=1)


class ChatModel(ConfigurationModel):
    """A service's model, for an OpenAI-compatible endpoint (dstack's ``model``)."""

    type: Literal["chat"] = "chat"
    name: str = Field(min_length=1)
    format: Literal["openai", "tgi"] = "openai"
    prefix: str = "/v1"
    chat_template: str | None = None
    eos_token: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class PartitionKey(ConfigurationModel):
    type: Literal["ip_address", "header"] = "ip_address"
    header: str | None = None

    @model_validator(mode="after")
    def _header_named(self) -> "PartitionKey":
        check((self.type == "header") == (self.header is not None), "header",
              "give 'header' exactly when type is 'header'")
        return self


class RateLimit(ConfigurationModel):
    prefix: str = "/"
    key: PartitionKey = PartitionKey()
    rps: float = Field(gt=0)
    burst: int = Field(default=0, ge=0)


class Scaling(ConfigurationModel):
    """Autoscaling rules. Stackyard has no request metrics (no gateway): a range of replicas runs its min."""

    metric: Literal["rps"]
    target: float = Field(gt=0)
    window: int | str | None = None
    scale_up_delay: int | str | None = None
    scale_down_delay: int | str | None = None
