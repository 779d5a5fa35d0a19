"""``manage.py runstack`` end to end: the embedded default serves the API, runs the worker and beat, stops cleanly.

The command runs as a real subprocess in its own session (so its process group can be checked for
leftovers), on a free port, with a fresh data dir and no DATABASE_URL / CELERY_BROKER_URL.
"""

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FLEET_YAML = """\
# One 8-GPU instance cut into 8 blocks: eight 1-GPU jobs can share it.
type: fleet
name: gpu8
nodes: 1
backends: [sim]
resources:
  gpu: H100:8
blocks: 8
"""

VOLUME_YAML = """\
type: volume
name: runstack-vol
backend: sim
region: eu-west-1
size: 10GB
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Stack:
    """A running ``runstack`` and a tiny HTTP client for it."""

    def __init__(self, tmp_path: Path):
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.token = secrets.token_hex(20)
        self.log_path = tmp_path / "runstack.log"
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
        env.update(STACKYARD_DATA_DIR=str(tmp_path / "data"), STACKYARD_ADMIN_TOKEN=self.token)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", "runstack", "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pgid = self.process.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def request(self, method: str, path: str, body: str | None = None, content_type: str = "application/json"):
        """Return (status, parsed JSON or raw text)."""
        request = urllib.request.Request(self.base + path, method=method, data=body.encode() if body else None)
        request.add_header("Authorization", f"Token {self.token}")
        if body is not None:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def wait_until(self, what: str, check, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"runstack exited with {self.process.returncode}:\n{self.output()}"
            try:
                if check():
                    return
            except OSError:
                pass  # not listening yet
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what}:\n{self.output()}")

    def kill(self) -> None:
        """Leave nothing behind, whatever happened. Once runstack is reaped, only a live group is ours."""
        if self.process.returncode is None or _group_alive(self.pgid):
            try:
                os.killpg(self.pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_runstack_serves_runs_background_jobs_and_stops_cleanly(tmp_path):
    stack = Stack(tmp_path)
    try:
        stack.wait_until("/healthz to answer 200", lambda: stack.request("GET", "/healthz")[0] == 200, timeout=60)

        status, body = stack.request("POST", "/api/v1/projects/main/apply/", FLEET_YAML, "application/yaml")
        assert status in (200, 202), (body, stack.output())
        assert body["name"] == "gpu8"

        status, body = stack.request("GET", "/api/v1/projects/")
        assert status == 200, (body, stack.output())
        assert "main" in [p["name"] for p in body["results"]]

        assert stack.request("GET", "/api/docs/")[0] == 200, stack.output()

        # Volume provisioning happens only in the worker (kicked on commit, and by beat every 2 s).
        status, body = stack.request("POST", "/api/v1/projects/main/apply/", VOLUME_YAML, "application/yaml")
        assert status in (200, 202), (body, stack.output())
        volume = "/api/v1/projects/main/volumes/runstack-vol/"
        stack.wait_until("the volume to become active",
                         lambda: stack.request("GET", volume)[1].get("status") == "active", timeout=30)

        stack.process.send_signal(signal.SIGTERM)
        try:
            returncode = stack.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"runstack did not stop within 20 s:\n{stack.output()}")
        assert returncode == 0, stack.output()
        deadline = time.monotonic() + 2  # the kernel may take a moment to reap the last child
        while _group_alive(stack.pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _group_alive(stack.pgid), f"processes left in the group:\n{stack.output()}"
    finally:
        stack.kill()
