"""``manage.py runstack`` end to end: the embedded default serves the API (gunicorn, or runserver with
``--dev``) and its static files, runs the worker and beat, stops cleanly.

The command runs as a real subprocess in its own session (so its process group can be checked for
leftovers), on a free port, with a fresh data dir and no DATABASE_URL / CELERY_BROKER_URL.
"""

import json
import os
import re
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

    def __init__(self, tmp_path: Path, *args: str, admin_token: bool = True, **extra_env: str):
        """With ``admin_token``, STACKYARD_ADMIN_TOKEN is set (200 characters: any length from 32 works);
        without it, bootstrap makes a token when admin has none and the banner shows it (``banner_token``)."""
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.token = secrets.token_urlsafe(150)[:200] if admin_token else None
        self.log_path = tmp_path / "runstack.log"
        env = {k: v for k, v in os.environ.items()
               if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "STACKYARD_ADMIN_TOKEN")}
        env.update(STACKYARD_DATA_DIR=str(tmp_path / "data"), **extra_env)
        if admin_token:
            env["STACKYARD_ADMIN_TOKEN"] = self.token
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", "runstack", "--host", "127.0.0.1", "--port", str(self.port), *args],
                cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pgid = self.process.pid

    def banner_token(self) -> str | None:
        """The token the banner shows (only one made by this start is ever shown), or None."""
        self.wait_until("the banner", lambda: "Stackyard is running" in self.output(), timeout=60)
        found = re.search(r"^  token:    (\S+)   \(new", self.output(), re.MULTILINE)
        return found.group(1) if found else None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def request(self, method: str, path: str, body: str | None = None, content_type: str = "application/json"):
        """Return (status, parsed JSON or raw text)."""
        status, _, raw = self.fetch(method, path, body, content_type)
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def fetch(self, method: str, path: str, body: str | None = None, content_type: str = "application/json"):
        """Return (status, headers, raw body)."""
        request = urllib.request.Request(self.base + path, method=method, data=body.encode() if body else None)
        request.add_header("Authorization", f"Token {self.token}")
        if body is not None:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.headers, err.read()

    def stop(self) -> None:
        """SIGTERM: runstack must exit 0 and leave no process of its group behind."""
        self.process.send_signal(signal.SIGTERM)
        try:
            returncode = self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"runstack did not stop within 20 s:\n{self.output()}")
        assert returncode == 0, self.output()
        deadline = time.monotonic() + 2  # the kernel may take a moment to reap the last child
        while _group_alive(self.pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _group_alive(self.pgid), f"processes left in the group:\n{self.output()}"

    def assert_static_files_served(self) -> None:
        """The admin's CSS and JS, and every local asset the API docs page loads, come from the web server."""
        status, _, docs = self.fetch("GET", "/api/docs/")
        assert status == 200, self.output()
        docs_assets = re.findall(r'"(/static/[^"]+\.(?:js|css))"', docs.decode())
        for path in ["/static/admin/css/base.css", "/static/admin/js/core.js", *docs_assets]:
            status, headers, raw = self.fetch("GET", path)
            kind = "text/css" if path.endswith(".css") else "javascript"
            assert status == 200 and kind in headers["Content-Type"] and raw, (path, status, self.output())

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
    # DEBUG off, as in production: static files then come only from what runstack collected.
    stack = Stack(tmp_path, DJANGO_DEBUG="false")
    try:
        stack.wait_until("/healthz to answer 200", lambda: stack.request("GET", "/healthz")[0] == 200, timeout=60)
        assert stack.fetch("GET", "/healthz")[1]["Server"] == "gunicorn", "the default web server is gunicorn"
        stack.assert_static_files_served()

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

        # Every fast reconciler has finished a pass in the worker by now (beat ticks every 2 s).
        stack.wait_until("every reconciler to finish a pass",
                         lambda: stack.request("GET", "/healthz")[1]["workers"] == "ok", timeout=30)
        assert "(gunicorn, " in stack.output()
        assert stack.token not in stack.output(), "a token given in the environment is never printed"

        stack.stop()
    finally:
        stack.kill()


def test_runstack_dev_serves_with_runserver(tmp_path):
    # No STACKYARD_ADMIN_TOKEN: the first start makes admin a token and shows it, once.
    stack = Stack(tmp_path, "--dev", admin_token=False)
    try:
        stack.token = stack.banner_token()
        assert stack.token and len(stack.token) >= 43, stack.output()
        stack.wait_until("/healthz to answer 200", lambda: stack.request("GET", "/healthz")[0] == 200, timeout=60)
        assert stack.fetch("GET", "/healthz")[1]["Server"].startswith("WSGIServer/"), "--dev runs runserver"
        stack.assert_static_files_served()
        assert stack.request("GET", "/api/v1/projects/")[0] == 200
        stack.stop()
    finally:
        stack.kill()
    token = stack.token
    # A restart shows no token (only its hash is stored) but says how to make one; the first still works.
    stack = Stack(tmp_path, "--dev", admin_token=False)
    try:
        assert stack.banner_token() is None and "manage.py createtoken admin" in stack.output()
        assert token not in stack.output()
        stack.token = token
        assert stack.request("GET", "/api/v1/projects/")[0] == 200
        stack.stop()
    finally:
        stack.kill()
