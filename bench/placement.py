"""Placement throughput and block-count verification time, on PostgreSQL + Redis.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/stackyard_bench \\
    CELERY_BROKER_URL=redis://127.0.0.1:6379/13 .venv/bin/python bench/placement.py

1. End to end: 1,000 one-block jobs are submitted by 4 concurrent clients (through
   ``runs.services.submit_run``, the API's code path, without HTTP) onto 125 eight-block sim instances
   (zero latency), with 1 and then 2 real Celery worker processes and beat running; we time from the
   first submission until every job is ``running``. Then placement and start alone: with the workers
   up, 1,000 submissions commit in one transaction and we time from that commit.
2. ``fleets.verify_block_counts`` over 10,000 instances with 100,000 finished and 20,000 live jobs,
   once with every count right and once with 100 drifted counts.
The database named in DATABASE_URL is emptied first: never point this at real data.
"""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("STACKYARD_RECONCILE_INTERVAL", "1")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

INSTANCES, BLOCKS, JOBS = 125, 8, 1000


def reset_database() -> None:
    if connection.vendor != "postgresql":
        sys.exit("bench/placement.py measures PostgreSQL: set DATABASE_URL=postgres://...")
    call_command("migrate", verbosity=0)
    call_command("flush", interactive=False, verbosity=0)


def start_processes(workers: int) -> list[subprocess.Popen]:
    celery = [sys.executable, "-m", "celery", "-A", "config"]
    quiet = ["--loglevel=WARNING"]
    procs = [subprocess.Popen([*celery, "worker", "--pool=solo", f"--hostname=bench{n}@%h", "--without-gossip",
                               "--without-mingle", "--without-heartbeat", *quiet], cwd=ROOT)
             for n in range(workers)]
    schedule = Path(os.environ.get("STACKYARD_DATA_DIR", ROOT / ".stackyard")) / "bench-beat-schedule"
    procs.append(subprocess.Popen([*celery, "beat", "--scheduler=django_celery_beat.schedulers:DatabaseScheduler",
                                   f"--schedule={schedule}", *quiet], cwd=ROOT))
    return procs


def stop_processes(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def build_fleet():
    from backends.services import create_backend
    from fleets.instances import process_instances
    from fleets.services import apply_fleet
    from fleets.specs import parse_fleet_spec
    from projects.services import create_project

    project = create_project(name="bench")
    create_backend(project=project, name="sim", type="sim", config={"latency": 0})
    spec = parse_fleet_spec({"type": "fleet", "name": "gpu8", "nodes": INSTANCES, "resources": {"gpu": "H100:8"},
                             "blocks": BLOCKS})
    apply_fleet(project=project, spec=spec)
    return project, process_instances


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


SUBMITTERS = 4  # concurrent clients, as many API users would be


def submit_all(project, specs, submit_run) -> None:
    """Submit from a few threads, like concurrent API clients (each submission is latency-bound)."""

    def submit(chunk):
        try:
            for spec in chunk:
                submit_run(project=project, spec=spec)
        finally:
            connection.close()

    threads = [threading.Thread(target=submit, args=(specs[n::SUBMITTERS],)) for n in range(SUBMITTERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def placement_only_round(workers: int) -> dict:
    """Workers running and idle; 1,000 submissions become visible in one commit (a single kick):
    the time from that commit until every job is running is placement + start alone."""
    from django.db import transaction

    from config.celery import app
    from fleets.models import Instance
    from runs.configuration import parse_run_spec
    from runs.models import Job
    from runs.services import submit_run

    reset_database()
    app.control.purge()
    project, _ = build_fleet()
    specs = [parse_run_spec({"type": "task", "name": f"job-{n}", "commands": ["train"], "resources": {"gpu": 1},
                             "fleets": ["gpu8"]}) for n in range(JOBS)]
    procs = start_processes(workers)
    try:
        assert wait_until(lambda: Instance.objects.filter(status="idle").count() == INSTANCES, 120)
        time.sleep(2)  # let every worker finish starting up
        with transaction.atomic():
            for spec in specs:
                submit_run(project=project, spec=spec)
        start = time.monotonic()
        done = wait_until(lambda: Job.objects.filter(status="running").count() == JOBS, 300)
        elapsed = time.monotonic() - start
    finally:
        stop_processes(procs)
    return {"all_running": done, "seconds": elapsed, "placements_per_s": JOBS / elapsed}


def placement_round(workers: int) -> dict:
    from config.celery import app
    from fleets.models import Instance
    from runs.configuration import parse_run_spec
    from runs.models import Job
    from runs.services import submit_run

    reset_database()
    app.control.purge()
    project, _ = build_fleet()
    procs = start_processes(workers)
    try:
        up = wait_until(lambda: Instance.objects.filter(status="idle").count() == INSTANCES, 120)
        assert up, "the fleet did not come up"
        specs = [parse_run_spec({"type": "task", "name": f"job-{n}", "commands": ["train"],
                                 "resources": {"gpu": 1}, "fleets": ["gpu8"]}) for n in range(JOBS)]
        start = time.monotonic()
        submit_all(project, specs, submit_run)
        submitted = time.monotonic() - start
        done = wait_until(lambda: Job.objects.filter(status="running").count() == JOBS, 300)
        elapsed = time.monotonic() - start
        busy = sum(Instance.objects.values_list("busy_blocks", flat=True))
    finally:
        stop_processes(procs)
    return {"workers": workers, "all_running": done, "seconds": elapsed, "submit_seconds": submitted,
            "placements_per_s": JOBS / elapsed, "busy_blocks": busy}


def verification_round() -> dict:
    from django.db.models import F

    from fleets.blocks import verify_block_counts
    from fleets.models import Fleet, Instance
    from projects.models import Project
    from runs.models import Job, Run

    reset_database()
    project = Project.objects.create(name="bench")
    fleet = Fleet.objects.create(project=project, name="big", spec={}, status="active")
    instances = Instance.objects.bulk_create(
        Instance(project=project, fleet=fleet, name=f"big-{n}", instance_num=n, total_blocks=8, busy_blocks=2,
                 status="busy") for n in range(10_000))
    run = Run.objects.create(project=project, name="many", type="task", spec={}, status="running")
    jobs = []
    for n, instance in enumerate(instances):
        jobs += [Job(project=project, run=run, name=f"j{n}-{k}", replica_num=n, job_num=k, instance=instance,
                     blocks=1, status="running") for k in range(2)]
        jobs += [Job(project=project, run=run, name=f"f{n}-{k}", replica_num=n, job_num=10 + k, instance=instance,
                     blocks=1, status="done") for k in range(10)]
    Job.objects.bulk_create(jobs, batch_size=5000)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    start = time.monotonic()
    clean = verify_block_counts()
    clean_seconds = time.monotonic() - start
    Instance.objects.filter(pk__in=[i.pk for i in instances[:100]]).update(busy_blocks=F("busy_blocks") + 1)
    start = time.monotonic()
    fixed = verify_block_counts()
    drift_seconds = time.monotonic() - start
    return {"instances": len(instances), "live_jobs": 20_000, "finished_jobs": 100_000,
            "clean_corrections": len(clean), "clean_seconds": clean_seconds,
            "drift_corrections": len(fixed), "drift_seconds": drift_seconds}


def main() -> None:
    print(f"machine: {os.cpu_count()} cores; PostgreSQL + Redis ({os.environ.get('CELERY_BROKER_URL')})")
    for workers in (1, 2):
        r = placement_round(workers)
        print(f"end to end, {workers} worker(s): {JOBS} jobs submitted by {SUBMITTERS} clients onto "
              f"{INSTANCES}x{BLOCKS}-block instances, all running={r['all_running']} in {r['seconds']:.2f} s "
              f"(submitting took {r['submit_seconds']:.2f} s) -> {r['placements_per_s']:.0f} placements/s; "
              f"busy blocks {r['busy_blocks']}/{INSTANCES * BLOCKS}")
    for workers in (1, 2):
        r = placement_only_round(workers)
        print(f"placement only, {workers} worker(s): {JOBS} jobs committed at once, all running={r['all_running']} "
              f"{r['seconds']:.2f} s after the commit -> {r['placements_per_s']:.0f} placements/s")
    v = verification_round()
    print(f"verify_block_counts: {v['instances']} instances, {v['live_jobs']} live + {v['finished_jobs']} finished "
          f"jobs: {v['clean_seconds']:.3f} s with no drift ({v['clean_corrections']} corrections), "
          f"{v['drift_seconds']:.3f} s correcting {v['drift_corrections']} drifted counts")


if __name__ == "__main__":
    main()
