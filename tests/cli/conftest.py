"""One real Stackyard for every CLI test: ``manage.py runstack`` in a subprocess (``tests.test_runstack.Stack``:
its own data dir, SQLite and the filesystem broker, its own admin token), with a fleet of two 8-block
CPU instances applied through the CLI itself. The CLI runs in-process with typer's ``CliRunner``, its
config file in a temporary folder (``STACKYARD_CLI_CONFIG``), never in the real home.
"""

import os
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import events, follow, runs
from cli.main import app
from cli.output import console, err_console
from tests.test_runstack import Stack

# The console script `make install` puts beside the venv's python.
STACKYARD = Path(sys.executable).parent / "stackyard"
FLEET_YAML = """\
type: fleet
name: cli-cpu
nodes: 2
backends: [sim]
resources:
  cpu: 16
blocks: 8
"""


class Cli:
    """``stackyard`` in-process: ``cli("ps", "-a")`` returns click's Result, checked to hold no traceback."""

    def __init__(self, config_path: Path):
        self.config_path = config_path
        self.runner = CliRunner()

    def __call__(self, *args: str, input: str | None = None, env: dict | None = None):
        result = self.runner.invoke(app, list(args), input=input,
                                    env={"STACKYARD_CLI_CONFIG": str(self.config_path), **(env or {})})
        assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), \
            f"stackyard {' '.join(args)} raised {result.exception!r}:\n{result.output}"
        assert "Traceback" not in result.output, result.output
        return result


@pytest.fixture(scope="package")
def _fast_cli():
    """Poll and refresh faster than a person needs, and
    print as wide as a terminal would, so a line is never folded in the middle of what a test looks for."""
    saved = (follow.POLL_SECONDS, runs.WATCH_SECONDS, events.WATCH_SECONDS, console.width, err_console.width)
    follow.POLL_SECONDS = runs.WATCH_SECONDS = events.WATCH_SECONDS = 0.3
    console.width = err_console.width = 250
    yield
    follow.POLL_SECONDS, runs.WATCH_SECONDS, events.WATCH_SECONDS, console.width, err_console.width = saved


@pytest.fixture(scope="package")
def stack(tmp_path_factory, _fast_cli):
    # Reconcilers every second and running jobs polled twice a second: a run's life takes seconds, not tens.
    # Three web workers: one may hold a followed log stream while the others answer.
    stack = Stack(tmp_path_factory.mktemp("cli-stack"), "--web-workers", "3", STACKYARD_RECONCILE_INTERVAL="1",
                  STACKYARD_JOB_POLL_INTERVAL="0.5")
    try:
        stack.wait_until("/healthz to answer 200", lambda: stack.request("GET", "/healthz")[0] == 200, timeout=60)
        yield stack
    finally:
        stack.kill()


@pytest.fixture(scope="package")
def cli_config(tmp_path_factory, stack) -> Path:
    path = tmp_path_factory.mktemp("cli-home") / "config.yml"
    result = Cli(path)("config", "--url", stack.base, "--token", stack.token, "--project", "main")
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture(scope="package")
def fleet(stack, cli_config, tmp_path_factory) -> str:
    """The fleet every run lands on, applied and followed by the CLI until active."""
    path = tmp_path_factory.mktemp("cli-files") / "fleet.yml"
    path.write_text(FLEET_YAML)
    result = Cli(cli_config)("apply", "-f", str(path), "-y", "--timeout", "60")
    assert result.exit_code == 0, result.output
    assert "fleet 'cli-cpu': active" in result.output
    return "cli-cpu"


@pytest.fixture
def cli(cli_config, fleet) -> Cli:
    return Cli(cli_config)


@pytest.fixture
def write(tmp_path):
    """Write a configuration file into the test's folder: ``write("task.yml", text)`` returns its path."""
    def _write(name: str, text: str) -> str:
        path = tmp_path / name
        path.write_text(text)
        return str(path)
    return _write


def script_env(cli_config: Path) -> dict:
    """The environment of the console script run as a subprocess: unbuffered, so lines come as printed."""
    return {**os.environ, "STACKYARD_CLI_CONFIG": str(cli_config), "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}


def api_get(stack, path: str):
    """(status, body) of ``GET /api/v1/projects/main/{path}``."""
    return stack.request("GET", f"/api/v1/projects/main/{path.lstrip('/')}")


def wait_for(stack, what: str, check, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}:\n{stack.output()}")
