"""Runs through the real stack over HTTP, the way users reach it, beside a pgbench floor.

    createdb -h 127.0.0.1 -U postgres stackyard_bench
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/stackyard_bench \\
    CELERY_BROKER_URL=redis://127.0.0.1:6379/13 .venv/bin/python bench/api_runs.py [--rounds 3]

The database named in DATABASE_URL is emptied first: never point this at real data.

1. ``manage.py runstack`` (its default web server, one Celery worker, beat at 1 s) on PostgreSQL +
   Redis; a fleet of 25 sim instances of 8 blocks (8×H100, zero latency) is applied and comes up.
2. 8 concurrent clients apply 200 tasks (``gpu: 1``, a workload that runs until stopped) with
   ``POST /apply/``; we time from the first request until the API lists all 200 ``running``.
3. The same 8 clients stop all 200 (``POST /runs/{name}/stop/``); we time until all 200 are
   ``terminated``, and take each run's stop latency from its request to its ``terminated`` event.
4. The floor: ``pgbench`` runs the SQL of one placement (take the blocks, move the job, write the
   event: one transaction) with 8 clients for 5 s against the same database, in the same run.
"""

import argparse
import http.client
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
RUNS, CLIENTS, INSTANCES, BLOCKS = 200, 8, 25, 8
EXTRA = os.environ.get("BENCH_RUNSTACK_ARGS", "").split()  # e.g. "--concurrency 4" to compare settings
TOKEN = "bench" + secrets.token_hex(16)
TASK = "type: task\nname: {name}\ncommands: [serve]\nresources: {{gpu: 1}}\nfleets: [gpu8]\n"
FLEET = f"type: fleet\nname: gpu8\nnodes: {INSTANCES}\nresources: {{gpu: H100:8}}\nblocks: {BLOCKS}\n"


class Api:
    """A keep-alive HTTP client for one thread."""

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def call(self, method: str, path: str, body: str | None = None, content_type: str = "application/json"):
        headers = {"Authorization": f"Token {TOKEN}", "Content-Type": content_type}
        self.conn.request(method, "/api/v1/projects/main" + path, body=body, headers=headers)
        response = self.conn.getresponse()
        data = response.read()
        if response.status >= 400:
            raise RuntimeError(f"{method} {path}: {response.status} {data[:300]!r}")
        return json.loads(data) if data else None

    def count(self, status: str) -> int:
        return self.call("GET", f"/runs/?status={status}&page_size=1")["count"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def reset_database(env: dict) -> None:
    url = urlparse(env["DATABASE_URL"])
    name, admin = url.path.lstrip("/"), ["-h", url.hostname or "127.0.0.1", "-U", url.username or "postgres"]
    subprocess.run(["dropdb", *admin, "--if-exists", "--force", name], check=True)
    subprocess.run(["createdb", *admin, name], check=True)


def start_stack(env: dict, port: int) -> subprocess.Popen:
    stack = subprocess.Popen([sys.executable, "manage.py", "runstack", "--port", str(port), *EXTRA], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            Api(port).call("GET", "/fleets/")
            return stack
        except (OSError, RuntimeError, http.client.HTTPException):
            time.sleep(0.5)
    stop_stack(stack)
    sys.exit("runstack did not answer within 120 s")


def stop_stack(stack: subprocess.Popen) -> None:
    os.killpg(stack.pid, 15)
    try:
        stack.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(stack.pid, 9)


CPU_GROUPS = (("web (gunicorn)", "gunicorn"), ("worker (celery)", "worker"), ("beat", " beat"),
              ("postgres", "postgres"), ("redis", "redis-server"))


def cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far by each part of the stack (and the bench's clients), from /proc."""
    tick, totals = os.sysconf("SC_CLK_TCK"), dict.fromkeys([g for g, _ in CPU_GROUPS] + ["clients (bench)"], 0.0)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used = (int(fields[11]) + int(fields[12])) / tick
        if int(pid) == os.getpid():
            totals["clients (bench)"] += used
            continue
        group = next((g for g, needle in CPU_GROUPS if needle in cmdline), None)
        if group is not None:
            totals[group] += used
    return totals


def cpu_delta(before: dict, after: dict) -> dict[str, float]:
    return {group: after[group] - before[group] for group in before}


def wait_for(predicate, timeout: float, poll: float = 0.05) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic()
        time.sleep(poll)
    raise TimeoutError("the stack did not get there in time")


def in_parallel(port: int, work: list, action) -> dict:
    """Run ``action(api, item)`` for every item from CLIENTS threads; returns {item: time sent}."""
    sent, lock, queue = {}, threading.Lock(), list(work)

    def client():
        api = Api(port)
        while True:
            with lock:
                if not queue:
                    return
                item = queue.pop()
            at = time.time()
            action(api, item)
            sent[item] = at

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sent


def event_times(api: Api, kind: str) -> dict[str, float]:
    """When each run reached ``kind``, by the server's own event log (polling only says "by now")."""
    events, page = {}, f"/events/?resource_type=run&kind={kind}&page_size=500"
    while page:
        body = api.call("GET", page)
        for event in body["results"]:
            events[event["resource_name"]] = datetime.fromisoformat(event["created_at"]).timestamp()
        page = body["next"] and body["next"].split("/projects/main", 1)[1]
    return events


def one_round(port: int, round_no: int) -> dict:
    api = Api(port)
    names = [f"r{round_no}-{n}" for n in range(RUNS)]
    cpu_start = cpu_seconds()
    start = time.monotonic()
    applied = in_parallel(port, names, lambda a, name: a.call("POST", "/apply/", TASK.format(name=name),
                                                              "application/yaml"))
    submitted = time.monotonic()
    # Polled gently (the polls are API requests too); the times come from the server's events.
    wait_for(lambda: api.count("running") >= RUNS, 120, poll=0.25)
    cpu_placed = cpu_seconds()
    running = max(event_times(api, "running")[name] for name in names) - min(applied.values())
    cpu_read = cpu_seconds()  # reading the events is the bench's, not the stop's
    stop_start = time.monotonic()
    sent = in_parallel(port, names, lambda a, name: a.call("POST", f"/runs/{name}/stop/", '{"abort": false}'))
    stops_sent = time.monotonic()
    wait_for(lambda: api.count("terminated") >= RUNS * (round_no + 1), 120, poll=0.25)
    cpu_stopped = cpu_seconds()
    ended = event_times(api, "terminated")
    stopped = max(ended[name] for name in names) - min(sent.values())
    latencies = sorted(ended[name] - sent[name] for name in names)
    return {
        "submit_s": submitted - start, "placed_s": running, "place_rate": RUNS / running,
        "stop_send_s": stops_sent - stop_start, "stopped_s": stopped, "stop_rate": RUNS / stopped,
        "stop_p50": statistics.median(latencies), "stop_p90": latencies[int(0.9 * len(latencies))],
        "cpu_place": cpu_delta(cpu_start, cpu_placed), "cpu_stop": cpu_delta(cpu_read, cpu_stopped),
    }


PGBENCH_PLACEMENT = """\\set instance random(:imin, :imax)
\\set job random(:jmin, :jmax)
BEGIN;
UPDATE fleets_instance SET busy_blocks = busy_blocks + 1, updated_at = now()
    WHERE id = :instance AND busy_blocks <= total_blocks - 1;
UPDATE runs_job SET status = 'provisioning', instance_id = :instance, blocks = 1, updated_at = now()
    WHERE id = :job AND status = 'submitted';
INSERT INTO projects_event (project_id, resource_type, resource_name, kind, message, actor, created_at)
    VALUES (1, 'job', 'bench', 'provisioning', '1/8 block(s)', '', now());
UPDATE fleets_instance SET busy_blocks = busy_blocks - 1 WHERE id = :instance AND busy_blocks > 0;
COMMIT;
"""


PLACEMENT_IDS = {"i": "fleets.Instance", "j": "runs.Job"}


def pgbench_floor(env: dict, script: str = PGBENCH_PLACEMENT, ids: dict[str, str] = PLACEMENT_IDS) -> float:
    """Transactions per second of ``script`` (by default one placement's SQL, rolled back to its start, so
    repeatable); ``ids`` names the model whose smallest and largest id each ``:<key>min``/``:<key>max`` is."""
    if shutil.which("pgbench") is None:
        return float("nan")
    url = urlparse(env["DATABASE_URL"])
    bounds = ", ".join(f"*apps.get_model({model!r}).objects.aggregate(Min('id'), Max('id')).values()"
                       for model in ids.values())
    out = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c",
         f"from django.apps import apps; from django.db.models import Max, Min; print({bounds})"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout.splitlines()[-1].split()
    variables = [arg for n, key in enumerate(ids) for arg in
                 ("-D", f"{key}min={out[2 * n]}", "-D", f"{key}max={out[2 * n + 1]}")]
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as file:
        file.write(script)
    result = subprocess.run(
        ["pgbench", "-h", url.hostname or "127.0.0.1", "-U", url.username or "postgres", "-n", "-c", str(CLIENTS),
         "-j", "2", "-T", "5", "-f", file.name, *variables, url.path.lstrip("/")],
        capture_output=True, text=True, check=True).stdout
    return float(next(line for line in result.splitlines() if line.startswith("tps")).split()[2])


def stack_env() -> dict:
    """The environment of a bench's ``runstack``: our token, beat at 1 s, a fresh data dir (its logs/)."""
    env = {**os.environ, "STACKYARD_ADMIN_TOKEN": TOKEN, "STACKYARD_RECONCILE_INTERVAL": "1",
           "STACKYARD_DATA_DIR": tempfile.mkdtemp(prefix="stackyard-bench-")}
    if not env.get("DATABASE_URL", "").startswith("postgres"):
        sys.exit(f"bench/{Path(sys.argv[0]).name} measures PostgreSQL + Redis: set DATABASE_URL and CELERY_BROKER_URL")
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    env = stack_env()
    reset_database(env)
    port = free_port()
    stack = start_stack(env, port)
    try:
        api = Api(port)
        api.call("POST", "/apply/", FLEET, "application/yaml")
        wait_for(lambda: api.call("GET", "/instances/?status=idle&page_size=1")["count"] >= INSTANCES, 120, 0.5)
        results = [one_round(port, n) for n in range(args.rounds)]
    finally:
        stop_stack(stack)
    floor = pgbench_floor(env)
    print(f"{RUNS} tasks, {CLIENTS} clients, {INSTANCES} instances x {BLOCKS} blocks, {os.cpu_count()} cores")
    for n, r in enumerate(results):
        print(f"round {n}: submit {r['submit_s']:.2f} s; all running after {r['placed_s']:.2f} s = "
              f"{r['place_rate']:.0f} runs/s | stops sent in {r['stop_send_s']:.2f} s; all terminated after "
              f"{r['stopped_s']:.2f} s = {r['stop_rate']:.0f} runs/s; stop->terminated p50 {r['stop_p50']:.3f} s, "
              f"p90 {r['stop_p90']:.3f} s")
    for phase in ("place", "stop"):
        spent = {g: statistics.median(r[f"cpu_{phase}"][g] for r in results) for g in results[0][f"cpu_{phase}"]}
        print(f"CPU per run while {'placing' if phase == 'place' else 'stopping'} (median of rounds, ms): "
              + ", ".join(f"{g} {1000 * v / RUNS:.1f}" for g, v in spent.items())
              + f"; total {1000 * sum(spent.values()) / RUNS:.1f}")
    print(f"pgbench floor, one placement's SQL ({CLIENTS} clients, 5 s): {floor:.0f} tx/s")


if __name__ == "__main__":
    main()
