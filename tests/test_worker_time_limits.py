"""A stuck task cannot keep a worker: the worker runstack starts kills it at its hard time limit and goes
on with the next task, on the broker of the test environment (filesystem or Redis).

The worker is runstack's worker command line, as a subprocess, on a queue of its own (so it takes no
other test's messages) and with one pool process: the next task can only run once the stuck one has
been killed. It uses the test database, so the pass heartbeat it records can be checked too.
"""

import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from config.celery import app
from core.models import PassHeartbeat
from ops.management.commands.runstack import child_commands
from tests.timelimit_tasks import STUCK_TIME_LIMIT

ROOT = Path(__file__).resolve().parent.parent


def _test_database_url() -> str:
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    host, port = db["HOST"] or "127.0.0.1", db["PORT"] or 5432
    return f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{host}:{port}/{db['NAME']}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_for(predicate, timeout: float, worker: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        assert worker.poll() is None, f"the worker exited with {worker.returncode}:\n{log.read_text()[-4000:]}"
        time.sleep(0.2)
    raise AssertionError(f"timed out; worker log:\n{log.read_text()[-4000:]}")


@pytest.fixture
def runstack_worker(transactional_db, tmp_path):
    """runstack's Celery worker with one pool process; yields (queue, hostname, process, log)."""
    queue, hostname = f"timelimit-{secrets.token_hex(4)}", f"timelimit-{secrets.token_hex(4)}@test"
    log = tmp_path / "worker.log"
    argv = [*child_commands("127.0.0.1", 8000, concurrency=1, loglevel="INFO")["worker"],
            "--include=tests.timelimit_tasks", f"--queues={queue}", f"--hostname={hostname}"]
    # The data dir of this process's settings: there is the filesystem broker's folder.
    env = {**os.environ, "DATABASE_URL": _test_database_url(), "STACKYARD_DATA_DIR": str(settings.DATA_DIR),
           "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        worker = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield queue, hostname, worker, log
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(worker.pid, signal.SIGKILL)  # and any pool process left behind
        except ProcessLookupError:
            pass
        worker.wait()


def test_a_stuck_task_is_killed_at_its_hard_time_limit_and_the_worker_goes_on(runstack_worker, tmp_path):
    queue, hostname, worker, log = runstack_worker
    folder = tmp_path / "marks"
    folder.mkdir()
    stuck_runs = lambda: sorted(folder.glob("stuck-started-*"))  # noqa: E731
    with app.connection_for_write() as conn:  # a connection of its own: no pool another test may have closed
        app.send_task("tests.stuck", args=[str(folder)], queue=queue, connection=conn)
        _wait_for(lambda: stuck_runs(), timeout=60, worker=worker, log=log)
        # The only pool process is now stuck: the next task can run only once it has been killed.
        app.send_task("tests.next", args=[str(folder)], queue=queue, connection=conn)
    _, _, stuck_pid, started = stuck_runs()[0].name.split("-", 3)
    _wait_for(lambda: (folder / "next-done").exists(), timeout=STUCK_TIME_LIMIT + 30, worker=worker, log=log)

    next_pid, finished = (folder / "next-done").read_text().split()
    assert float(finished) - float(started) >= STUCK_TIME_LIMIT - 0.5
    assert next_pid != stuck_pid  # the only pool process was killed and replaced
    _wait_for(lambda: not _alive(int(stuck_pid)), timeout=10, worker=worker, log=log)  # killed and reaped
    assert f"Hard time limit ({STUCK_TIME_LIMIT}s) exceeded for tests.stuck" in log.read_text()

    time.sleep(1)
    assert len(stuck_runs()) == 1, "the killed task was delivered again"
    beat = PassHeartbeat.objects.get(task_name="tests.next")
    assert beat.worker == hostname
    assert not PassHeartbeat.objects.filter(task_name="tests.stuck").exists()
