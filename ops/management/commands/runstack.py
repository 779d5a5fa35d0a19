"""``manage.py runstack``: the embedded default in one command (SPEC section 1).

Migrates, collects static files into the data dir (WhiteNoise serves them), bootstraps
(``ops.bootstrap``), applies the server config file when ``STACKYARD_CONFIG`` names one
(``ops.server_config``; a file that cannot be applied stops the start), then supervises three
children: the web server (gunicorn with ``--web-workers`` sync workers on ``config.wsgi``, chosen by
``bench/web_servers.py``; Django's ``runserver`` with ``--dev``), a Celery worker (prefork pool: each
task runs in a pool process the worker can kill, so tasks' hard time limits hold and a stuck pass
cannot keep a slot for ever) and Celery beat with the database scheduler.

The children stay in runstack's process group, so a Ctrl-C in a terminal reaches all of them, and
each is told (Linux ``PR_SET_PDEATHSIG``) to stop if runstack itself is killed. On SIGINT/SIGTERM
runstack sends SIGTERM to every child, waits up to ``STOP_TIMEOUT`` seconds, SIGKILLs stragglers
and exits 0. If a child exits on its own, the others are stopped the same way and runstack exits 1.
Children's output is shown prefixed with their name and appended to ``$STACKYARD_DATA_DIR/logs/``.
"""

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from ops.bootstrap import BootstrapError, bootstrap, check_admin_token
from ops.server_config import ServerConfigError, apply_at_start

STOP_TIMEOUT = 10.0
POLL_INTERVAL = 0.2
PROBE_INTERVAL = 0.5
PR_SET_PDEATHSIG = 1


@dataclass
class Child:
    """One supervised process and the thread copying its output."""

    name: str
    process: subprocess.Popen
    pump: threading.Thread | None = field(default=None)

    @property
    def running(self) -> bool:
        return self.process.poll() is None


class StopRequest:
    """Counts SIGINT/SIGTERM; a second signal while stopping skips the grace period."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, signum, frame) -> None:
        self.count += 1

    def __bool__(self) -> bool:
        return self.count > 0


def _die_with_parent(parent_pid: int):
    """A preexec_fn (Linux): the child gets SIGTERM when runstack dies, even from SIGKILL."""

    def preexec() -> None:
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except (AttributeError, OSError):
            return
        if os.getppid() != parent_pid:  # runstack died before prctl took effect
            os._exit(1)

    return preexec


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _public_base_url(host: str, port: int) -> str:
    # 0.0.0.0 / :: listen everywhere; the loopback address is the one that surely answers.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://{_address(host, port)}"


def fresh_metrics_dir() -> Path:
    """The children's ``PROMETHEUS_MULTIPROC_DIR`` (``core.metrics``), emptied: samples of processes
    from an earlier start would otherwise be added to this one's."""
    folder = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or settings.METRICS_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink(missing_ok=True)
    return folder


def _token_lines(base_url: str, new_token: str | None) -> list[str]:
    """How to call the API as admin. A token is shown only when this start made it: only its hash is stored."""
    if settings.ADMIN_TOKEN:
        token, where = "$STACKYARD_ADMIN_TOKEN", "  token:    the value of STACKYARD_ADMIN_TOKEN"
    elif new_token:
        token, where = new_token, f"  token:    {new_token}   (new: shown this once, only its hash is stored)"
    else:
        token, where = "<token>", ("  token:    admin has one (shown only when made); a new one: "
                                   ".venv/bin/python manage.py createtoken admin")
    return [where, f"  try:      curl -H \"Authorization: Token {token}\" {base_url}/api/v1/projects/"]


def default_web_workers() -> int:
    return 2 * (os.cpu_count() or 1)


def web_command(host: str, port: int, workers: int, dev: bool = False) -> list[str]:
    """Gunicorn's sync workers (the fastest and steadiest in ``bench/RESULTS.md``), or runserver with ``--dev``."""
    if dev:
        return [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), "runserver", "--noreload", "--insecure",
                _address(host, port)]
    # The graceful timeout stays under STOP_TIMEOUT so a stop never needs SIGKILL.
    return [sys.executable, "-m", "gunicorn", "config.wsgi:application", f"--bind={_address(host, port)}",
            "--worker-class=sync", f"--workers={workers}", f"--graceful-timeout={STOP_TIMEOUT / 2:g}",
            "--log-level=warning"]


def child_commands(host: str, port: int, concurrency: int, loglevel: str = "WARNING", *,
                   web_workers: int | None = None, dev: bool = False) -> dict[str, list[str]]:
    """The command line of each child, run from the project root with the venv's interpreter."""
    data_dir = Path(settings.DATA_DIR)
    celery = [sys.executable, "-m", "celery", "-A", "config"]
    return {
        "web": web_command(host, port, web_workers or default_web_workers(), dev),
        # prefork: the hard time limit kills the pool process running a stuck task; threads cannot.
        "worker": [*celery, "worker", f"--loglevel={loglevel}", "--pool=prefork", f"--concurrency={concurrency}",
                   "--without-gossip", "--without-mingle"],
        "beat": [*celery, "beat", f"--loglevel={loglevel}", f"--scheduler={settings.CELERY_BEAT_SCHEDULER}",
                 f"--schedule={data_dir / 'celerybeat-schedule'}", f"--pidfile={data_dir / 'celerybeat.pid'}"],
    }


class Command(BaseCommand):
    help = "Migrate, bootstrap, then run the web server, a Celery worker and Celery beat until interrupted."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1", help="address the web server listens on")
        parser.add_argument("--port", type=int, default=8000, help="port of the web server")
        parser.add_argument("--web-workers", type=int, default=default_web_workers(),
                            help="gunicorn worker processes (default: 2 per CPU core)")
        parser.add_argument("--dev", action="store_true",
                            help="serve with Django's runserver instead of gunicorn (one process, for development)")
        parser.add_argument("--concurrency", type=int, default=4, help="pool processes of the Celery worker")
        parser.add_argument("--celery-loglevel", default="WARNING",
                            help="log level of the worker and beat (INFO shows every task; default WARNING)")

    def handle(self, *args, host: str, port: int, concurrency: int, celery_loglevel: str, web_workers: int,
               dev: bool, **options):
        if web_workers < 1 or concurrency < 1:
            raise CommandError("--web-workers and --concurrency must be at least 1")
        self.lock = threading.Lock()
        self.web_server = "runserver, --dev" if dev else f"gunicorn, {web_workers} workers"
        quiet = max(0, options["verbosity"] - 1)
        try:
            check_admin_token(settings.ADMIN_TOKEN)  # before anything else: a short token is refused at once
        except BootstrapError as err:
            raise CommandError(str(err))
        call_command("migrate", interactive=False, verbosity=quiet)
        # The production server has no static file handler of its own: WhiteNoise serves STATIC_ROOT.
        call_command("collectstatic", interactive=False, verbosity=quiet)
        try:
            _, new_token = bootstrap(settings.ADMIN_TOKEN)
        except BootstrapError as err:
            raise CommandError(str(err))
        self._apply_server_config()
        connections.close_all()

        stop = StopRequest()
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        children = self._start(child_commands(host, port, concurrency, celery_loglevel, web_workers=web_workers,
                                              dev=dev))
        try:
            failed = self._supervise(children, stop, _public_base_url(host, port), new_token)
        finally:
            self._stop(children, stop)
        if failed is not None:
            raise CommandError(f"{failed.name} exited with status {failed.process.returncode}; stopped the others",
                               returncode=1)
        self._say("stackyard: stopped")

    def _apply_server_config(self) -> None:
        """Apply ``STACKYARD_CONFIG`` before any child starts; a failure stops the start."""
        try:
            outcomes = apply_at_start()
        except ServerConfigError as err:
            raise CommandError(f"STACKYARD_CONFIG: {err}\nnothing was started; fix the file and start again") from None
        for outcome in outcomes:
            self._say(f"stackyard: config: {outcome.describe()}")

    # --- children ---------------------------------------------------------------------------

    def _start(self, commands: dict[str, list[str]]) -> list[Child]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "STACKYARD_DATA_DIR": str(settings.DATA_DIR),
               "PROMETHEUS_MULTIPROC_DIR": str(fresh_metrics_dir())}
        log_dir = Path(settings.DATA_DIR) / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        preexec = _die_with_parent(os.getpid()) if sys.platform.startswith("linux") else None
        # Every child is forked before any output thread starts: preexec_fn is unsafe with threads.
        children = [
            Child(name, subprocess.Popen(argv, cwd=settings.BASE_DIR, env=env, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=preexec))
            for name, argv in commands.items()
        ]
        for child in children:
            child.pump = threading.Thread(target=self._pump, args=(child, log_dir / f"{child.name}.log"), daemon=True)
            child.pump.start()
            self._say(f"stackyard: started {child.name} (pid {child.process.pid})")
        return children

    def _pump(self, child: Child, log_path: Path) -> None:
        prefix = f"{child.name:<6} | "
        with open(log_path, "a", encoding="utf-8") as log:
            for raw in iter(child.process.stdout.readline, b""):
                line = raw.decode("utf-8", errors="replace").rstrip("\n")
                log.write(line + "\n")
                log.flush()
                self._say(prefix + line)
        child.process.stdout.close()

    def _say(self, text: str) -> None:
        with self.lock:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()

    def _supervise(self, children: list[Child], stop: StopRequest, base_url: str, new_token: str | None
                   ) -> Child | None:
        """Wait for a stop request (returns None) or for a child to exit on its own (returns it)."""
        ready = False
        next_probe = 0.0
        while not stop:
            for child in children:
                if not child.running:
                    return None if stop else child
            if not ready and time.monotonic() >= next_probe:
                ready = self._probe(base_url, new_token)
                next_probe = time.monotonic() + PROBE_INTERVAL
            time.sleep(POLL_INTERVAL)
        return None

    def _stop(self, children: list[Child], stop: StopRequest) -> None:
        for child in children:
            if child.running:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        waiting = [c for c in children if c.running]
        while waiting and time.monotonic() < deadline and stop.count < 2:
            time.sleep(0.1)
            for child in [c for c in waiting if not c.running]:
                self._say(f"stackyard: {child.name} stopped (status {child.process.returncode})")
                waiting.remove(child)
        for child in children:
            if child.running:
                self._say(f"stackyard: {child.name} did not stop in time; killing it")
                child.process.kill()
            child.process.wait()
            if child.pump is not None:
                child.pump.join(timeout=2)

    # --- readiness --------------------------------------------------------------------------

    def _probe(self, base_url: str, new_token: str | None) -> bool:
        try:
            with urllib.request.urlopen(f"{base_url}/healthz", timeout=2) as response:
                health = response.status
        except urllib.error.HTTPError as err:
            health = err.code  # the server answers, but something behind it does not
        except (OSError, ValueError):
            return False
        self._banner(base_url, new_token, health)
        return True

    def _banner(self, base_url: str, new_token: str | None, health: int) -> None:
        lines = [
            "",
            "Stackyard is running (Ctrl-C stops web, worker and beat).",
            f"  web:      {base_url}/   ({self.web_server})",
            f"  admin:    {base_url}/admin/   (user 'admin'; set a password with: "
            "python manage.py changepassword admin)",
            f"  API docs: {base_url}/api/docs/",
            *_token_lines(base_url, new_token),
        ]
        if health != 200:
            lines.append(f"  warning:  {base_url}/healthz answers {health}: the database, the broker or the workers "
                         "are not ready")
        self._say("\n".join(lines) + "\n")
