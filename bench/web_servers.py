"""Which WSGI server ``runstack`` runs by default: requests/s and latency through the real stack.

    createdb -h 127.0.0.1 -U postgres stackyard_bench
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/stackyard_bench \\
    CELERY_BROKER_URL=redis://127.0.0.1:6379/13 .venv/bin/python bench/web_servers.py [--clients 8] [--seconds 15]

For each server (Django's runserver as the baseline, gunicorn with sync and gthread workers, granian's
WSGI interface, each with several worker counts) the database is reset to the same state (bootstrap,
plus ``SEED_RUNS`` runs), the server is started on a free loopback port, warmed up, then hit by
``--clients`` threads, each with its own keep-alive ``http.client`` connection, in two scenarios:

* ``GET /api/v1/projects/main/runs/`` (a 50-run page, token auth),
* ``POST /api/v1/projects/main/apply/`` with a small task YAML (a new run each time: a write path
  that creates the run, its job, events, and kicks placement on commit).

Each scenario stops after ``--requests`` requests or ``--seconds`` seconds, whichever comes first,
and prints requests/s, p50, p99 and the server's CPU time per request (all its processes, from
``/proc``: unlike requests/s it hardly moves with other load on the machine). Every server is
measured ``--rounds`` times, the order reversed each round, and the table gives each figure's median
over the rounds (requests/s also min-max): other work on the machine then shifts all servers alike
instead of one. Only the web server runs (no worker, no beat), so the figures compare servers, not
the reconcilers competing for the cores.
The database named in DATABASE_URL is emptied first: never point this at real data.
"""

import argparse
import http.client
import importlib.util
import os
import secrets
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection, connections  # noqa: E402

SEED_RUNS = 50
APP = "config.wsgi:application"
TASK_YAML = """\
type: task
name: {name}
commands: [python train.py]
resources:
  gpu: 1
"""


def server_commands(port: int) -> dict[str, list[str]]:
    py = sys.executable
    bind = f"127.0.0.1:{port}"
    gunicorn = [py, "-m", "gunicorn", APP, "-b", bind, "--log-level=warning"]
    granian = [py, "-m", "granian", "--interface", "wsgi", "--host", "127.0.0.1", "--port", str(port),
               "--log-level", "warning", "--no-ws"]
    return {
        "runserver (threaded)": [py, "manage.py", "runserver", "--noreload", "--insecure", bind],
        "gunicorn sync w=2": [*gunicorn, "-k", "sync", "-w", "2"],
        "gunicorn sync w=4": [*gunicorn, "-k", "sync", "-w", "4"],
        "gunicorn sync w=8": [*gunicorn, "-k", "sync", "-w", "8"],
        "gunicorn gthread w=2 t=4": [*gunicorn, "-k", "gthread", "-w", "2", "--threads", "4"],
        "gunicorn gthread w=4 t=2": [*gunicorn, "-k", "gthread", "-w", "4", "--threads", "2"],
        "granian wsgi w=2": [*granian, "--workers", "2", APP],
        "granian wsgi w=4": [*granian, "--workers", "4", APP],
        "granian wsgi w=2 bt=4": [*granian, "--workers", "2", "--blocking-threads", "4", APP],
    }


def reset_database(token: str) -> None:
    from configurations.apply import apply_configuration
    from ops.bootstrap import bootstrap
    from projects.models import Project

    if connection.vendor != "postgresql":
        sys.exit("bench/web_servers.py measures PostgreSQL: set DATABASE_URL=postgres://...")
    call_command("migrate", verbosity=0)
    call_command("flush", interactive=False, verbosity=0)
    user, _ = bootstrap(token)
    project = Project.objects.get(name="main")
    for n in range(SEED_RUNS):
        apply_configuration(project=project, body=TASK_YAML.format(name=f"seed-{n}").encode(),
                            content_type="application/yaml", user=user, dry_run=False)
    connections.close_all()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            return
        except OSError:
            time.sleep(0.2)
    sys.exit("server did not answer in time")


class Load:
    """``clients`` threads sending one kind of request until ``limit`` requests or ``seconds`` pass."""

    def __init__(self, port: int, token: str, clients: int, limit: int, seconds: float):
        self.port, self.token, self.clients = port, token, clients
        self.limit, self.seconds = limit, seconds
        self.lock = threading.Lock()
        self.sent = 0
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}

    def _take(self) -> int | None:
        with self.lock:
            if self.sent >= self.limit or time.monotonic() >= self.deadline:
                return None
            self.sent += 1
            return self.sent

    def _client(self, request) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while (n := self._take()) is not None:
            method, path, body, headers = request(n)
            started = time.perf_counter()
            try:
                conn.request(method, path, body=body, headers={"Authorization": f"Token {self.token}", **headers})
                response = conn.getresponse()
                response.read()
                ok = response.status in (200, 202)
                error = None if ok else f"HTTP {response.status}"
            except (OSError, http.client.HTTPException) as err:
                conn.close()
                error = type(err).__name__
            elapsed = time.perf_counter() - started
            with self.lock:
                if error is None:
                    self.latencies.append(elapsed)
                else:
                    self.errors[error] = self.errors.get(error, 0) + 1
        conn.close()

    def run(self, request) -> dict:
        self.deadline = time.monotonic() + self.seconds
        threads = [threading.Thread(target=self._client, args=(request,)) for _ in range(self.clients)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
        lat = sorted(self.latencies)
        return {
            "rps": len(lat) / wall,
            "p50": statistics.median(lat) * 1000 if lat else float("nan"),
            "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else float("nan"),
            "ok": len(lat),
            "errors": self.errors,
        }


def tree_cpu_seconds(root: int) -> float:
    """CPU time (user + system) used so far by process ``root`` and its live descendants (Linux /proc)."""
    parents, cpu = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        parents[int(entry.name)] = int(fields[1])
        cpu[int(entry.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo += [child for child, parent in parents.items() if parent == pid and child not in tree]
    return sum(cpu.get(pid, 0.0) for pid in tree)


def get_runs(n: int):
    return "GET", "/api/v1/projects/main/runs/", None, {}


def make_apply(prefix: str):
    def apply(n: int):
        body = TASK_YAML.format(name=f"{prefix}-{n}")
        return "POST", "/api/v1/projects/main/apply/", body, {"Content-Type": "application/yaml"}

    return apply


def measure(name: str, argv: list[str], token: str, args) -> dict:
    reset_database(token)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # Servers' output (runserver logs every request) goes to a file, not through this terminal.
    with open(args.log, "ab") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        wait_listening(args.port, proc)
        Load(args.port, token, args.clients, 100, 30).run(get_runs)  # warm every worker up
        results = {}
        for scenario, request in (("GET runs", get_runs), ("POST apply", make_apply(f"b{secrets.token_hex(3)}"))):
            # CPU time per request does not depend on what else the machine runs, unlike requests/s.
            cpu = tree_cpu_seconds(proc.pid)
            results[scenario] = Load(args.port, token, args.clients, args.requests, args.seconds).run(request)
            results[scenario]["cpu_ms"] = (tree_cpu_seconds(proc.pid) - cpu) * 1000 / max(1, results[scenario]["ok"])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for scenario, r in results.items():
        errors = f"  errors {r['errors']}" if r["errors"] else ""
        print(f"{name:<28} {scenario:<11} {r['rps']:7.1f} req/s  p50 {r['p50']:6.1f} ms  p99 {r['p99']:7.1f} ms"
              f"  server CPU {r['cpu_ms']:5.1f} ms/req  ({r['ok']} ok){errors}", flush=True)
    return results


def summary(rounds: list[dict], scenario: str) -> str:
    rps = [r[scenario]["rps"] for r in rounds]
    p50 = statistics.median(r[scenario]["p50"] for r in rounds)
    p99 = statistics.median(r[scenario]["p99"] for r in rounds)
    cpu = statistics.median(r[scenario]["cpu_ms"] for r in rounds)
    spread = f" ({min(rps):.0f}–{max(rps):.0f})" if len(rps) > 1 else ""
    return f"**{statistics.median(rps):.0f}**{spread} | {p50:.0f} ms | {p99:.0f} ms | {cpu:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    parser.add_argument("--seconds", type=float, default=10, help="time limit of each scenario")
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each server")
    parser.add_argument("--requests", type=int, default=5000, help="request limit of each scenario")
    parser.add_argument("--only", default="", help="run the servers whose name contains this text")
    parser.add_argument("--log", default="/tmp/stackyard-bench-web-servers.log", help="servers' output")
    args = parser.parse_args()
    token = secrets.token_hex(20)
    call_command("collectstatic", interactive=False, verbosity=0)
    names = [name for name in server_commands(0) if args.only in name]
    if importlib.util.find_spec("granian") is None:  # not a dependency of Stackyard
        print("granian is not installed (pip install granian==2.8.7 to measure it): its rows are left out")
        names = [name for name in names if not name.startswith("granian")]
    table: dict[str, list[dict]] = {name: [] for name in names}
    for round_ in range(args.rounds):
        for name in names if round_ % 2 == 0 else reversed(names):
            args.port = free_port()
            table[name].append(measure(name, server_commands(args.port)[name], token, args))
    print(f"\n{os.cpu_count()} cores, {args.clients} clients, at most {args.requests} requests or "
          f"{args.seconds:g} s per scenario, median of {args.rounds} rounds\n")
    print("| server | GET runs: req/s | p50 | p99 | CPU/req | POST apply: req/s | p50 | p99 | CPU/req |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, rounds in table.items():
        print(f"| {name} | {summary(rounds, 'GET runs')} | {summary(rounds, 'POST apply')} |")


if __name__ == "__main__":
    main()
