"""Where the CLI finds its server: ``~/.stackyard/config.yml`` (``url``, ``token``, ``project``).

``STACKYARD_CLI_CONFIG`` points at another file (tests, several servers). The file holds an API token,
so it is written readable by its owner only (0600), like ``~/.ssh`` keys and dstack's own config.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from cli.errors import CliError

CONFIG_ENV = "STACKYARD_CLI_CONFIG"
DEFAULT_PROJECT = "main"


@dataclass
class Config:
    url: str = ""
    token: str = ""
    project: str = DEFAULT_PROJECT


def config_path() -> Path:
    override = os.environ.get(CONFIG_ENV)
    return Path(override).expanduser() if override else Path.home() / ".stackyard" / "config.yml"


def read_config() -> Config | None:
    """The saved configuration, or None when there is no file yet."""
    path = config_path()
    if not path.exists():
        return None
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise CliError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise CliError(f"{path} is not a mapping of url, token and project; run `stackyard config` again")
    return Config(url=str(data.get("url") or ""), token=str(data.get("token") or ""),
                  project=str(data.get("project") or DEFAULT_PROJECT))


def load_config() -> Config:
    """The configuration the API commands need: a URL and a token, else a usage error saying what to run."""
    config = read_config()
    if config is None or not config.url or not config.token:
        raise CliError(f"no server configured in {config_path()}: run "
                       "`stackyard config --url URL --token TOKEN [--project NAME]` first")
    return config


def save_config(config: Config) -> Path:
    """Write the file with mode 0600 from its first byte (never briefly readable by others)."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(asdict(config), sort_keys=False)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)  # an existing file keeps its old mode through O_CREAT
    return path
