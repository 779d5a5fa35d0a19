"""Replacing crashed replicas of a service, through the real stack over HTTP, beside a pgbench floor.

    createdb -h 127.0.0.1 -U postgres stackyard_bench3
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/stackyard_bench3 \\
    CELERY_BROKER_URL=redis://127.0.0.1:6379/11 .venv/bin/python bench/replica_retry.py [--crashes 100]

The database named in DATABASE_URL is emptied first: never point this at real data. The stack, the
HTTP client and the floor are bench/api_runs.py's; the stack polls running jobs every 0.2 s
(``STACKYARD_JOB_POLL_INTERVAL``, unless the environment sets it), since detection depends on it.

1. ``manage.py runstack`` on PostgreSQL + Redis; a fleet of 4 sim instances of 8 blocks (8×H100, zero
   latency) comes up, and a service of 10 one-GPU replicas with ``retry: {on_events: [error],
   interval: 0s}`` is applied; we wait until the run is ``running`` with 10 replicas running.
2. 100 crashes, one at a time, replica ``n % 10`` for the n-th: a ``crash_job`` fault on its job name
   (``svc-0-3``); once the job's ``failed`` event is there, the fault is deleted (so the replacement is
   not crashed too) and we wait for the replica's next ``running`` event. From the events (not from
   our polling): (a) fault posted → ``failed``, (b) ``failed`` → replacement ``running`` (split at its
   ``provisioning`` event), (c) the total.
3. Checks after every crash: the crashed replica's latest job is the next submission and ``running``;
   the 9 other replicas' latest jobs (submission, status, start, instance) did not change; the run is
   ``running`` with 10 replicas running. At the end, every run event after the start is ``retrying``.
4. The floor: ``pgbench`` runs the SQL of one resubmission (lock the run, check, insert the job row and
   the run's event), its placement and its start (three transactions, then one undoing them) with 8
   clients for 5 s against the same database, in the same run.
"""

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

from api_runs import (
    CLIENTS,
    Api,
    free_port,
    pgbench_floor,
    reset_database,
    stack_env,
    start_stack,
    stop_stack,
    wait_for,
)

REPLICAS, INSTANCES, BLOCKS = 10, 4, 8
POLL_INTERVAL = "0.2"  # seconds, STACKYARD_JOB_POLL_INTERVAL
TARGET_MEDIAN = 0.5  # seconds, failed -> replacement running
WAIT = 30.0  # seconds for any one step before the bench gives up
FLEET = f"type: fleet\nname: svc8\nnodes: {INSTANCES}\nresources: {{gpu: H100:8}}\nblocks: {BLOCKS}\n"
SERVICE = (f"type: service\nname: svc\nreplicas: {REPLICAS}\nport: 8000\nresources: {{gpu: 1}}\ncommands: [serve]\n"
           "fleets: [svc8]\nretry: {on_events: [error], interval: 0s}\n")
# What identifies a replica's latest job: a replacement changes the submission, a restart the start.
IDENTITY = ("name", "submission_num", "status", "started_at", "instance")

PGBENCH_RESUBMISSION = """\\set run random(:rmin, :rmax)
\\set replica 100000 + :client_id
BEGIN;
SELECT id FROM runs_run WHERE id = :run FOR UPDATE;
SELECT 1 FROM runs_job WHERE run_id = :run AND replica_num = :replica AND submission_num > 0 LIMIT 1;
INSERT INTO runs_job (project_id, run_id, name, replica_num, job_num, submission_num, status, status_message,
        termination_reason, blocks, volumes, workload_id, ready, probe_passes, spec_version, submitted_at,
        updated_at, lease_owner, failures)
    SELECT project_id, id, 'bench', :replica, 0, 1, 'submitted', 'retry 1 of replica 3 after job bench failed',
        '', 0, '[]', '', false, 0, 0, now(), now(), '', 0 FROM runs_run WHERE id = :run RETURNING id AS job \\gset
INSERT INTO projects_event (project_id, resource_type, resource_name, kind, message, actor, created_at)
    VALUES (1, 'run', 'bench', 'retrying', 'retry 1 of replica 3 after job bench failed', '', now());
COMMIT;
BEGIN;
WITH took AS (UPDATE fleets_instance SET busy_blocks = busy_blocks + 1, updated_at = now()
        WHERE id = (SELECT id FROM fleets_instance ORDER BY busy_blocks LIMIT 1) AND busy_blocks <= total_blocks - 1
        RETURNING id)
    UPDATE runs_job SET status = 'provisioning', instance_id = took.id, blocks = 1, updated_at = now()
    FROM took WHERE runs_job.id = :job AND status = 'submitted' AND instance_id IS NULL;
INSERT INTO projects_event (project_id, resource_type, resource_name, kind, message, actor, created_at)
    VALUES (1, 'job', 'bench', 'provisioning', 'placed on bench', '', now());
COMMIT;
BEGIN;
UPDATE runs_job SET status = 'running', workload_id = 'bench', started_at = now(), status_message = '', ready = true,
    updated_at = now() WHERE id = :job AND status = 'provisioning';
INSERT INTO projects_event (project_id, resource_type, resource_name, kind, message, actor, created_at)
    VALUES (1, 'job', 'bench', 'running', '', '', now());
COMMIT;
BEGIN;
UPDATE fleets_instance SET busy_blocks = busy_blocks - 1
    WHERE id = (SELECT instance_id FROM runs_job WHERE id = :job) AND busy_blocks > 0;
DELETE FROM runs_job WHERE id = :job;
COMMIT;
"""
RESUBMISSION_IDS = {"r": "runs.Run"}


def pages(api: Api, path: str) -> list[dict]:
    rows = []
    while path:
        body = api.call("GET", path)
        rows += body["results"]
        path = body["next"] and body["next"].split("/projects/main", 1)[1]
    return rows


def latest_jobs(api: Api) -> dict[int, dict]:
    """Each replica's newest submission (the API lists jobs by replica, then submission)."""
    return {job["replica_num"]: job for job in pages(api, "/runs/svc/jobs/?page_size=500")}


def job_events(api: Api, name: str, since: float) -> list[tuple[float, str]]:
    """The job's events (every submission of a replica has the same name) at or after ``since``, oldest first."""
    events = api.call("GET", f"/events/?resource_type=job&resource_name={name}&page_size=30")["results"]
    return sorted((t, e["kind"]) for e in events if (t := datetime.fromisoformat(e["created_at"]).timestamp()) >= since)


def first(events: list[tuple[float, str]], kind: str, since: float) -> float | None:
    return next((t for t, k in events if k == kind and t >= since), None)


def wait_event(api: Api, name: str, kind: str, since: float) -> float:
    """When the job ``name`` first reached ``kind`` at or after ``since``, by its event."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if (at := first(job_events(api, name, since), kind, since)) is not None:
            return at
        time.sleep(0.05)  # gently: the polls are API requests on the stack's cores
    raise TimeoutError(f"job {name} did not reach {kind} within {WAIT:g} s")


def identity(job: dict) -> list:
    return [job[key] for key in IDENTITY]


def run_state(api: Api) -> tuple[str, int]:
    run = api.call("GET", "/runs/svc/")
    return run["status"], run["replicas"]["running"]


def crash(api: Api, replica: int, before: dict[int, dict]) -> dict:
    """Crash one replica and wait for its replacement; the times from the events and what changed."""
    name, submission = f"svc-0-{replica}", before[replica]["submission_num"]
    posted = time.time()
    api.call("POST", "/backends/sim/faults/", json.dumps({"kind": "crash_job", "job": name, "exit_status": 1}))
    failed = wait_event(api, name, "failed", posted)
    api.call("DELETE", "/backends/sim/faults/?kind=crash_job")
    running = wait_event(api, name, "running", failed)
    placed = first(job_events(api, name, failed), "provisioning", failed)
    after = latest_jobs(api)
    if after[replica]["status"] != "running":  # the replacement crashed too (the fault was still there)
        wait_for(lambda: after.update(latest_jobs(api)) or after[replica]["status"] == "running", WAIT, poll=0.1)
    changed = [r for r in before if r != replica and identity(before[r]) != identity(after[r])]
    return {"detect": failed - posted, "replace": running - failed, "total": running - posted,
            "place": placed - failed if placed else float("nan"), "start": running - placed if placed else float("nan"),
            "extra": after[replica]["submission_num"] - submission - 1, "changed": changed,
            "old": before[replica]["status"], "run": run_state(api), "after": after}


def spread(values: list[float]) -> str:
    values = sorted(values)
    return (f"median {statistics.median(values):.3f} s, p90 {values[int(0.9 * len(values))]:.3f} s, "
            f"max {values[-1]:.3f} s")


def setup(api: Api) -> float:
    """The fleet, then the service; seconds from the service's apply until all replicas run."""
    api.call("POST", "/apply/", FLEET, "application/yaml")
    wait_for(lambda: api.call("GET", "/instances/?status=idle&page_size=1")["count"] >= INSTANCES, 120, 0.5)
    start = time.monotonic()
    api.call("POST", "/apply/", SERVICE, "application/yaml")
    wait_for(lambda: run_state(api) == ("running", REPLICAS), 120, 0.1)
    return time.monotonic() - start


def crashes(api: Api, count: int) -> list[dict]:
    """``count`` crashes one at a time, round robin over the replicas; what each one measured."""
    current, results = latest_jobs(api), []
    for n in range(count):
        result = crash(api, n % REPLICAS, current)
        current = result.pop("after")
        results.append(result)
    return results


def run_kinds(api: Api, since: float) -> dict[str, int]:
    """How many of each kind of event the run had after ``since`` (health events by the health they name)."""
    counts = {}
    for event in pages(api, "/events/?resource_type=run&resource_name=svc&page_size=500"):
        if datetime.fromisoformat(event["created_at"]).timestamp() > since:
            kind = event["kind"] if event["kind"] != "health" else "health " + event["message"].split(":")[0]
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def diagnose(api: Api, env: dict) -> None:
    """What the stack looks like when a wait ran out: the run, each replica's latest job, recent events."""
    try:
        print(f"run: {api.call('GET', '/runs/svc/')}", file=sys.stderr)
        for replica, job in latest_jobs(api).items():
            print(f"  replica {replica}: {identity(job)} {job['status_message']}", file=sys.stderr)
        for event in api.call("GET", "/events/?page_size=20")["results"]:
            print(f"  event {event['created_at']} {event['resource_type']} {event['resource_name']} "
                  f"{event['kind']}: {event['message']}", file=sys.stderr)
    except (OSError, RuntimeError) as err:
        print(f"could not read the stack: {err}", file=sys.stderr)
    print(f"runstack logs: {Path(env['STACKYARD_DATA_DIR']) / 'logs'}", file=sys.stderr)


def report(env: dict, up_s: float, results: list[dict], kinds: dict, floor: float) -> None:
    print(f"{len(results)} crashes one at a time (replica n % {REPLICAS}) of a {REPLICAS}-replica service, "
          f"{INSTANCES} instances x {BLOCKS} blocks, {os.cpu_count()} cores, load average {os.getloadavg()[1]:.1f}; "
          f"STACKYARD_JOB_POLL_INTERVAL={env['STACKYARD_JOB_POLL_INTERVAL']} s, beat every "
          f"{env['STACKYARD_RECONCILE_INTERVAL']} s (running jobs are polled on each runs.process_jobs pass)")
    print(f"setup: all {REPLICAS} replicas running {up_s:.2f} s after the apply")
    pick = {key: [r[key] for r in results] for key in ("detect", "replace", "place", "start", "total")}
    print(f"(a) fault posted -> old job failed:           {spread(pick['detect'])}")
    met = "met" if statistics.median(pick["replace"]) < TARGET_MEDIAN else "MISSED"
    print(f"(b) old job failed -> replacement running:    {spread(pick['replace'])} "
          f"(target median < {TARGET_MEDIAN:g} s: {met})")
    print(f"    of which failed -> provisioning (resubmit + place): {spread(pick['place'])}")
    print(f"    of which provisioning -> running (start):           {spread(pick['start'])}")
    print(f"(c) fault posted -> replacement running:      {spread(pick['total'])}")
    touched = [(n, r["changed"]) for n, r in enumerate(results) if r["changed"]]
    print(f"other replicas changed during a crash: {touched or 'never'}")
    extra = [(n, r["extra"]) for n, r in enumerate(results) if r["extra"]]
    print(f"crashed replica's latest job was not the next submission: {extra or 'never'}")
    not_running = [(n, r["old"]) for n, r in enumerate(results) if r["old"] != "running"]
    print(f"crashed replica not running before its crash: {not_running or 'never'}")
    off = [(n, r["run"]) for n, r in enumerate(results) if r["run"] != ("running", REPLICAS)]
    print(f"run not running with {REPLICAS} replicas after a replacement: {off or 'never'}")
    statuses = {k: v for k, v in kinds.items() if k != "retrying" and not k.startswith("health")}
    print(f"run events after the start: {kinds}; status changes: {statuses or 'none'} "
          f"(want retrying {len(results)}, no status change)")
    print(f"pgbench floor, one resubmission + placement + start (4 transactions with the undo; {CLIENTS} clients, "
          f"5 s): {floor:.0f} resubmissions/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crashes", type=int, default=100)
    args = parser.parse_args()
    env = stack_env()
    env.setdefault("STACKYARD_JOB_POLL_INTERVAL", POLL_INTERVAL)
    reset_database(env)
    port = free_port()
    stack = start_stack(env, port)
    api = Api(port)
    try:
        up_s = setup(api)
        started = time.time()
        results = crashes(api, args.crashes)
        kinds = run_kinds(api, started)
    except (TimeoutError, RuntimeError):
        diagnose(api, env)
        raise
    finally:
        stop_stack(stack)
    report(env, up_s, results, kinds, pgbench_floor(env, PGBENCH_RESUBMISSION, RESUBMISSION_IDS))


if __name__ == "__main__":
    main()
