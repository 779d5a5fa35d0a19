"""Stopping runs that hold network volumes, through the real stack over HTTP, beside a pgbench floor.

    createdb -h 127.0.0.1 -U postgres stackyard_bench2
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/stackyard_bench2 \\
    CELERY_BROKER_URL=redis://127.0.0.1:6379/12 .venv/bin/python bench/volumes_stop.py

The database named in DATABASE_URL is emptied first: never point this at real data. The stack, the
HTTP clients and the floor are bench/api_runs.py's.

1. ``manage.py runstack`` on PostgreSQL + Redis; a fleet of 13 sim instances of 8 blocks (8×H100, zero
   latency) in eu-west-1a comes up, and 100 volumes ``v-000..v-099`` (10GB, eu-west-1a) become ``active``.
2. 8 concurrent clients apply 100 tasks, each mounting its own volume (``v-007:/data``), a workload that
   runs until stopped; we wait until all are ``running`` and every volume's attachment is ``attached``.
3. Clean path: the 8 clients stop all 100 (``{"abort": false}``); each run's latency is its request to its
   ``terminated`` event; every attachment must end ``detached``, unforced.
4. Stuck path: 100 new tasks on the same volumes, a ``stuck_detach`` fault (``forced_ok``) on every
   volume, all stopped: 3 s later they must all still be ``terminating``. Then all are aborted; each run's
   latency is its abort request to its ``terminated`` event; every attachment must end ``detached``, forced.
5. The floor: ``pgbench`` runs the SQL of one volume stop (ask the detach, record it, finish the job and
   its run with their events: three transactions) with 8 clients for 5 s against the same database.
"""

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
    event_times,
    free_port,
    in_parallel,
    pgbench_floor,
    reset_database,
    stack_env,
    start_stack,
    stop_stack,
    wait_for,
)

RUNS, INSTANCES, BLOCKS, STUCK_WAIT = 100, 13, 8, 3.0
TARGET_MEDIAN = 1.0  # seconds, stop -> terminated on the clean path
FLEET = (f"type: fleet\nname: vol8\nnodes: {INSTANCES}\nresources: {{gpu: H100:8}}\nblocks: {BLOCKS}\n"
         "backends: [sim]\nregions: [eu-west-1]\navailability_zones: [eu-west-1a]\n")
VOLUME = ("type: volume\nname: {name}\nbackend: sim\nregion: eu-west-1\navailability_zone: eu-west-1a\n"
          "size: 10GB\n")
TASK = ('type: task\nname: {name}\ncommands: [serve]\nresources: {{gpu: 1}}\nfleets: [vol8]\n'
        'volumes: ["{volume}:/data"]\n')
VOLUMES = [f"v-{n:03d}" for n in range(RUNS)]

PGBENCH_VOLUME_STOP = """\\set instance random(:imin, :imax)
\\set job random(:jmin, :jmax)
\\set attachment random(:amin, :amax)
BEGIN;
UPDATE runs_job SET workload_stopped_at = now() WHERE id = :job;
UPDATE volumes_volumeattachment SET detach_requested_at = now(), force = false, last_processed_at = NULL
    WHERE id = :attachment AND status IN ('attached', 'detaching', 'detached');
INSERT INTO projects_event (project_id, resource_type, resource_name, kind, message, actor, created_at)
    VALUES (1, 'volume', 'bench', 'detach_requested', 'from instance bench: job bench is stopping', '', now());
COMMIT;
BEGIN;
UPDATE volumes_volumeattachment SET status = 'detached', detached_at = now(), error = ''
    WHERE id = :attachment AND status IN ('detaching', 'detached');
INSERT INTO projects_event (project_id, resource_type, resource_name, kind, message, actor, created_at)
    VALUES (1, 'volume', 'bench', 'detached', 'from instance bench for job bench', '', now());
COMMIT;
BEGIN;
SELECT id FROM fleets_instance WHERE id = :instance FOR UPDATE;
UPDATE runs_job SET status = 'terminated', finished_at = now(), lease_until = NULL, updated_at = now()
    WHERE id = :job AND status IN ('terminating', 'terminated', 'aborted');
UPDATE fleets_instance SET busy_blocks = busy_blocks + 1 WHERE id = :instance AND busy_blocks <= total_blocks - 1;
UPDATE fleets_instance SET busy_blocks = busy_blocks - 1, updated_at = now() WHERE id = :instance AND busy_blocks > 0;
INSERT INTO projects_event (project_id, resource_type, resource_name, kind, message, actor, created_at)
    VALUES (1, 'job', 'bench', 'terminated', 'stopped_by_user', '', now());
UPDATE runs_run SET status = 'terminated', finished_at = now(), updated_at = now()
    WHERE id = (SELECT run_id FROM runs_job WHERE id = :job) AND status IN ('terminating', 'terminated');
INSERT INTO projects_event (project_id, resource_type, resource_name, kind, message, actor, created_at)
    VALUES (1, 'run', 'bench', 'terminated', 'stopped_by_user', '', now());
COMMIT;
"""
STOP_IDS = {"i": "fleets.Instance", "j": "runs.Job", "a": "volumes.VolumeAttachment"}


def apply(api: Api, yaml: str):
    return api.call("POST", "/apply/", yaml, "application/yaml")


def stop(api: Api, name: str, abort: bool):
    return api.call("POST", f"/runs/{name}/stop/", json.dumps({"abort": abort}))


def latest_attachments(api: Api) -> dict[str, dict | None]:
    """Each volume's newest attachment (the API lists them newest first), by volume name."""
    volumes = api.call("GET", "/volumes/?page_size=500")["results"]
    return {v["name"]: (v["attachments"] or [None])[0] for v in volumes}


def attachment_states(api: Api, prefix: str) -> dict[tuple, int]:
    """How many of our volumes' newest attachments are in each (status, force), for runs named ``prefix-*``;
    an attachment of another run counts as ("other", ...), a volume without one as ("none", ...)."""
    counts = {}
    for volume, attachment in latest_attachments(api).items():
        if attachment is None:
            key = ("none", None)
        elif not (attachment["job"] or "").startswith(f"{prefix}-{volume[2:]}-"):
            key = ("other", attachment["job"])
        else:
            key = (attachment["status"], attachment["force"])
        counts[key] = counts.get(key, 0) + 1
    return counts


def all_attached(api: Api, prefix: str) -> bool:
    return attachment_states(api, prefix).get(("attached", False), 0) >= RUNS


def active_volumes(api: Api) -> int:
    return sum(v["status"] == "active" for v in api.call("GET", "/volumes/?page_size=500")["results"])


def setup(api: Api, port: int) -> float:
    """The fleet and the volumes; seconds until every volume is active."""
    apply(api, FLEET)
    start = time.monotonic()
    in_parallel(port, VOLUMES, lambda a, name: apply(a, VOLUME.format(name=name)))
    wait_for(lambda: active_volumes(api) >= RUNS, 120, poll=0.5)
    volumes_s = time.monotonic() - start
    wait_for(lambda: api.call("GET", "/instances/?status=idle&page_size=1")["count"] >= INSTANCES, 120, 0.5)
    return volumes_s


def launch(api: Api, port: int, prefix: str) -> dict:
    """100 tasks ``prefix-NNN`` on volumes ``v-NNN``, all running with their volume attached."""
    names = [f"{prefix}-{n:03d}" for n in range(RUNS)]
    applied = in_parallel(port, names, lambda a, name: apply(a, TASK.format(name=name, volume=f"v-{name[-3:]}")))
    wait_for(lambda: api.count("running") >= RUNS and all_attached(api, prefix), 120, poll=0.25)
    running = event_times(api, "running")
    return {"names": names, "running_s": max(running[n] for n in names) - min(applied.values())}


def spread(latencies: list[float]) -> dict:
    latencies = sorted(latencies)
    return {"p50": statistics.median(latencies), "p90": latencies[int(0.9 * len(latencies))], "max": latencies[-1]}


def event_log(api: Api, resource_type: str, kind: str) -> dict[str, list[float]]:
    """Every time each resource reached ``kind`` (a volume reaches ``detached`` once per run it served)."""
    events, page = {}, f"/events/?resource_type={resource_type}&kind={kind}&page_size=500"
    while page:
        body = api.call("GET", page)
        for event in body["results"]:
            at = datetime.fromisoformat(event["created_at"]).timestamp()
            events.setdefault(event["resource_name"], []).append(at)
        page = body["next"] and body["next"].split("/projects/main", 1)[1]
    return events


def resource_of(run: str, resource_type: str) -> str:
    """The run ``c-007``'s job is ``c-007-0-0``, its volume ``v-007``."""
    return {"run": run, "job": f"{run}-0-0", "volume": f"v-{run[-3:]}"}[resource_type]


def stages(api: Api, sent: dict, steps: list[tuple[str, str, str]]) -> dict[str, float]:
    """Median seconds from each run's request to each step (label, resource type, event kind) of its stop."""
    medians = {}
    for label, resource_type, kind in steps:
        log = event_log(api, resource_type, kind)
        medians[label] = statistics.median(min(t for t in log[resource_of(run, resource_type)] if t >= at) - at
                                           for run, at in sent.items())
    return medians


def finish(api: Api, names: list[str], sent: dict, terminated_before: int, steps: list) -> dict:
    """Wait until the runs are terminated; their latencies from ``sent`` to their ``terminated`` event, and
    the median time to each step of the way."""
    wait_for(lambda: api.count("terminated") >= terminated_before + RUNS, 120, poll=0.25)
    ended = event_times(api, "terminated")
    return {"wall_s": max(ended[n] for n in names) - min(sent.values()), "stages": stages(api, sent, steps),
            **spread([ended[n] - sent[n] for n in names])}


CLEAN_STEPS = [("detach asked", "volume", "detach_requested"), ("detached", "volume", "detached"),
               ("job terminated", "job", "terminated"), ("run terminated", "run", "terminated")]
ABORT_STEPS = [("forced detach asked", "volume", "force_detach"), ("detached", "volume", "detached"),
               ("job aborted", "job", "aborted"), ("run terminated", "run", "terminated")]


def clean_path(api: Api, port: int) -> dict:
    runs = launch(api, port, "c")
    start = time.monotonic()
    sent = in_parallel(port, runs["names"], lambda a, name: stop(a, name, abort=False))
    runs["send_s"] = time.monotonic() - start
    result = finish(api, runs["names"], sent, 0, CLEAN_STEPS)
    return {**runs, **result, "attachments": attachment_states(api, "c")}


def stuck_path(api: Api, port: int) -> dict:
    runs = launch(api, port, "s")
    for volume in VOLUMES:
        fault = {"kind": "stuck_detach", "volume": volume, "forced_ok": True}
        api.call("POST", "/backends/sim/faults/", json.dumps(fault))
    in_parallel(port, runs["names"], lambda a, name: stop(a, name, abort=False))
    time.sleep(STUCK_WAIT)
    stuck = {"terminating": api.count("terminating"), "stuck_attachments": attachment_states(api, "s"),
             "message": api.call("GET", "/runs/?status=terminating&page_size=1")["results"][:1]}
    start = time.monotonic()
    sent = in_parallel(port, runs["names"], lambda a, name: stop(a, name, abort=True))
    stuck["send_s"] = time.monotonic() - start
    result = finish(api, runs["names"], sent, RUNS, ABORT_STEPS)
    return {**runs, **stuck, **result, "attachments": attachment_states(api, "s")}


def diagnose(api: Api, env: dict) -> None:
    """What the stack looks like when a wait ran out: run statuses, attachments, recent events, worker log."""
    statuses = ("submitted", "provisioning", "running", "terminating", "terminated", "failed", "done")
    print("runs: " + ", ".join(f"{s} {api.count(s)}" for s in statuses), file=sys.stderr)
    for prefix in ("c", "s"):
        print(f"attachments of {prefix}-*: {attachment_states(api, prefix)}", file=sys.stderr)
    for run in api.call("GET", "/runs/?status=terminating&page_size=3")["results"]:
        print(f"  {run['name']}: {run['status_message']}", file=sys.stderr)
    for event in api.call("GET", "/events/?page_size=15")["results"]:
        print(f"  event {event['created_at']} {event['resource_type']} {event['resource_name']} {event['kind']}: "
              f"{event['message']}", file=sys.stderr)
    logs = Path(env["STACKYARD_DATA_DIR"]) / "logs"
    print(f"runstack logs: {logs}", file=sys.stderr)


def stop_line(what: str, result: dict) -> str:
    return (f"{what}s sent in {result['send_s']:.2f} s; all {RUNS} terminated after {result['wall_s']:.2f} s = "
            f"{RUNS / result['wall_s']:.0f} runs/s; {what}->terminated median {result['p50']:.3f} s, "
            f"p90 {result['p90']:.3f} s, max {result['max']:.3f} s")


def stage_line(result: dict) -> str:
    return "  median from the request: " + ", ".join(f"{k} {v:.2f} s" for k, v in result["stages"].items())


def report(volumes_s: float, clean: dict, stuck: dict, floor: float) -> None:
    print(f"{RUNS} tasks with a volume each, {CLIENTS} clients, {INSTANCES} instances x {BLOCKS} blocks "
          f"(eu-west-1a), {os.cpu_count()} cores, load average {os.getloadavg()[1]:.1f} over the last 5 min")
    print(f"setup: {RUNS} volumes active after {volumes_s:.2f} s; clean round all running + attached after "
          f"{clean['running_s']:.2f} s, stuck round after {stuck['running_s']:.2f} s")
    met = "met" if clean["p50"] < TARGET_MEDIAN else "MISSED"
    print(f"clean stop: {stop_line('stop', clean)} (target median < {TARGET_MEDIAN:g} s: {met})")
    print(stage_line(clean))
    print(f"  attachments after: {clean['attachments']} (want {{('detached', False): {RUNS}}})")
    print(f"stuck stop: {STUCK_WAIT:g} s after the stops, {stuck['terminating']}/{RUNS} runs terminating; "
          f"attachments {stuck['stuck_attachments']}")
    if stuck["message"]:
        print(f"  e.g. {stuck['message'][0]['name']}: {stuck['message'][0]['status_message']}")
    print(f"abort: {stop_line('abort', stuck)}")
    print(stage_line(stuck))
    print(f"  attachments after: {stuck['attachments']} (want {{('detached', True): {RUNS}}})")
    print(f"pgbench floor, one volume stop's SQL ({CLIENTS} clients, 5 s): {floor:.0f} tx/s")


def main() -> None:
    env = stack_env()
    reset_database(env)
    port = free_port()
    stack = start_stack(env, port)
    api = Api(port)
    try:
        volumes_s = setup(api, port)
        clean = clean_path(api, port)
        stuck = stuck_path(api, port)
    except (TimeoutError, RuntimeError):
        diagnose(api, env)
        raise
    finally:
        stop_stack(stack)
    report(volumes_s, clean, stuck, pgbench_floor(env, PGBENCH_VOLUME_STOP, STOP_IDS))


if __name__ == "__main__":
    main()
