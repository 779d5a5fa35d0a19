"""Chaos with real processes on PostgreSQL + Redis: a worker SIGKILLed while it provisions (both
workers creating VMs; or between its creates and their recording), a worker SIGKILLed while it
terminates, the broker restarted under a running workload. Afterwards the world is whole: no
duplicate VM, no orphan, nothing lost, nothing stuck.

Every test runs its own throwaway ``redis-server`` on a free port (no message of another test can
reach these workers, and it can be restarted), real ``celery worker`` processes (prefork, each in
its own session so that a SIGKILL of its process group takes its pool with it) and a real ``celery
beat`` ticking every second, all on the pytest test database. The test process sends its own
messages (the kicks of API requests, remote control) to that broker too.

A killed worker's leases run out by themselves after ``DEFAULT_LEASE_SECONDS`` (60 s). Waiting a
minute per test is too slow for CI, so the test lets that minute pass for the dead worker only:
once every pass the survivor had running at the kill has finished, a lease still held by the owner
token it had at the kill can only be the dead worker's, and its ``lease_until`` is moved to now, as
the clock would have done. Nothing else of the world is touched.

Celery 5.7.0 has a bug a Redis restart hits (``CELERY_REDIS_RESTART_CRASH``: a worker with a task in
flight exits); requirements.txt pins 5.6.3, and the last test keeps it from coming back.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.db import connection
from django.utils import timezone

from backends.models import SimInstance
from config.celery import app
from fleets.models import Fleet, Instance
from fleets.provisioning import reconcile_fleets
from runs.models import JOB_FINISHED_STATES, Job, Run
from tests import factories
from tests.timelimit_tasks import STUCK_TIME_LIMIT
from volumes.models import Volume, VolumeAttachment

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parent.parent
LATENCY = 1.0  # seconds per sim call: creates and terminates are long enough to be killed in the middle
NODES = 6
FLEET_YAML = f"type: fleet\nname: chaos\nnodes: {NODES}\nbackends: [sim]\nresources: {{gpu: L4:1}}\n"
LEASED_MODELS = (Fleet, Instance, Job, Volume, VolumeAttachment)
IDLE_QUEUE = "chaos-standby"  # a stand-by worker listens here (nothing is ever sent to it) until told otherwise
# Celery 5.7.0 (commit feb789acc, "prevent graceful shutdown regression in connection recovery", #10242):
# on a lost Redis connection the consumer calls connection.collect() and then connection.close(); the
# second close of the channel restores the unacknowledged messages through a transport whose client
# collect() already cleared, and the worker exits with this error once its running tasks are over.
# Only a worker holding an unacknowledged message (acks_late: any running task) dies; 5.6.3 survives.
CELERY_CRASH_SIGNATURE = "Unrecoverable error: AttributeError(\"'NoneType' object has no attribute 'hostname'\")"
CELERY_REDIS_RESTART_CRASH = ("celery 5.7.0: a worker running an acks_late task when the Redis broker restarts "
                              "exits with " + CELERY_CRASH_SIGNATURE)


# --- processes --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Proc:
    """A child process in its own session (its pid is its process group), logging to a file."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict | None = None):
        self.name, self.log = name, log
        with open(log, "ab") as out:
            self.process = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, chars: int = 3000) -> str:
        return f"--- {self.name} (pid {self.pid}, exit {self.process.poll()}) ---\n{self.text()[-chars:]}"

    def kill(self) -> None:
        """SIGKILL the whole process group (a prefork worker and its pool processes)."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()

    def stop(self, timeout: float = 5) -> None:
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()  # and whatever of its group is left


class RedisServer:
    """A throwaway broker without persistence: a restart brings it back empty."""

    def __init__(self, tmp_path: Path):
        self.port, self.tmp_path, self.proc = _free_port(), tmp_path, None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = [shutil.which("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--daemonize", "no", "--dir", str(self.tmp_path)]
        self.proc = Proc("redis", argv, self.tmp_path / "redis.log")
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        _wait_for("redis-server to answer", lambda: _pings(client), timeout=10, diagnose=self.proc.tail)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


def _pings(client) -> bool:
    try:
        return client.ping()
    except redis.RedisError:
        return False


def _test_database_url() -> str:
    db = connection.settings_dict
    return (f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}"
            f"/{db['NAME']}")


class Cluster:
    """The broker, the workers and beat of one test; ``shutdown`` leaves nothing running."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.redis = RedisServer(tmp_path)
        self.workers: dict[str, Proc] = {}
        self.argvs: dict[str, list[str]] = {}
        self.beat: Proc | None = None
        self.env = {**os.environ, "DATABASE_URL": _test_database_url(), "CELERY_BROKER_URL": self.redis.url,
                    "STACKYARD_RECONCILE_INTERVAL": "1", "STACKYARD_DATA_DIR": str(settings.DATA_DIR),
                    "DJANGO_SECRET_KEY": settings.SECRET_KEY, "PYTHONUNBUFFERED": "1"}

    def start_worker(self, name: str, *, standby: bool = False, include: str = "") -> str:
        """A prefork worker with two pool processes on the default queue (or, on stand-by, on none that is used)."""
        hostname = f"{name}@chaos"
        queue = IDLE_QUEUE if standby else app.conf.task_default_queue
        argv = [sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel=INFO", "--pool=prefork",
                "--concurrency=2", "--without-gossip", "--without-mingle", f"--hostname={hostname}",
                f"--queues={queue}", *([f"--include={include}"] if include else [])]
        self.argvs[hostname] = argv
        self.workers[hostname] = Proc(hostname, argv, self.tmp_path / f"{name}.log", self.env)
        return hostname

    def start_beat(self) -> None:
        argv = [sys.executable, "-m", "celery", "-A", "config", "beat", "--loglevel=INFO",
                f"--scheduler={settings.CELERY_BEAT_SCHEDULER}", f"--schedule={self.tmp_path / 'beat-schedule'}",
                f"--pidfile={self.tmp_path / 'beat.pid'}"]
        self.beat = Proc("beat", argv, self.tmp_path / "beat.log", self.env)

    def wait_ready(self, *, beat: bool = True) -> None:
        for worker in self.workers.values():
            _wait_for(f"{worker.name} to be ready", lambda w=worker: " ready." in w.text(), timeout=60,
                      diagnose=self.logs, check=self.check_alive)
        if beat:
            _wait_for("beat to send its first tick", lambda: "Sending due task" in self.beat.text(), timeout=60,
                      diagnose=self.logs, check=self.check_alive)

    def take_over(self, hostname: str) -> None:
        """A stand-by worker starts consuming the default queue (remote control over the broker)."""
        queue = app.conf.task_default_queue
        replies = app.control.add_consumer(queue, destination=[hostname], reply=True, timeout=5)
        assert any(hostname in reply and "ok" in reply[hostname] for reply in replies or []), (replies, self.logs())

    def processes(self) -> list[Proc]:
        return [*self.workers.values(), *([self.beat] if self.beat else [])]

    def check_alive(self, *, dead: tuple[str, ...] = ()) -> None:
        for proc in self.processes():
            if proc.name not in dead and not proc.alive():
                raise AssertionError(f"{proc.name} exited with {proc.process.returncode}\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(proc.tail() for proc in [*self.processes(), *([self.redis.proc] if self.redis.proc else [])])

    def shutdown(self) -> None:
        for proc in self.processes():
            proc.kill()
        self.redis.stop()


def _point_app_at(url: str) -> None:
    """Send this process's messages to ``url``: Celery keeps its broker connections in pools made at
    first use, so they are closed and made again."""
    if app._pool is not None:
        app._pool.force_close_all()
    app._pool = None
    app.amqp._producer_pool = None
    app.conf.broker_url = url


@pytest.fixture
def cluster(transactional_db, tmp_path, monkeypatch):
    if not shutil.which("redis-server"):
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("the chaos tests need redis-server")
        pytest.skip("redis-server is not installed")
    cluster = Cluster(tmp_path)
    old_url = app.conf.broker_url
    try:
        cluster.redis.start()
        monkeypatch.setenv("CELERY_BROKER_URL", cluster.redis.url)  # Celery reads it before its own conf
        _point_app_at(cluster.redis.url)
        yield cluster
    finally:
        cluster.shutdown()
        monkeypatch.undo()
        _point_app_at(old_url)


# --- waiting, looking, killing ----------------------------------------------------------------


def _wait_for(what: str, predicate, *, timeout: float, diagnose=lambda: "", check=lambda: None) -> float:
    """Poll ``predicate`` until true; return the seconds it took, or fail saying what the world looks like."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        check()
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{diagnose()}")


def _world(backend) -> str:
    """The rows a reader needs to understand a failure: fleets, instances, the sim cloud, runs and jobs."""
    lines = ["fleets (name, status, message, lease_until, lease_owner):"]
    lines += [f"  {row}" for row in Fleet.objects.values_list("name", "status", "status_message", "lease_until",
                                                              "lease_owner")]
    lines.append("instances (name, status, provider id, reason, lease_until, lease_owner, failures, message):")
    lines += [f"  {row}" for row in Instance.objects.order_by("pk").values_list(
        "name", "status", "provider_instance_id", "termination_reason", "lease_until", "lease_owner", "failures",
        "status_message")]
    lines.append("sim instances (instance_id, name, state, created_at):")
    lines += [f"  {row}" for row in SimInstance.objects.filter(backend=backend).values_list(
        "instance_id", "name", "state", "created_at")]
    lines.append("runs (name, status, message):")
    lines += [f"  {row}" for row in Run.objects.order_by("pk").values_list("name", "status", "status_message")]
    lines.append("jobs (name, status, instance, lease_until, message):")
    lines += [f"  {row}" for row in Job.objects.order_by("pk").values_list(
        "name", "status", "instance__name", "lease_until", "status_message")]
    return "\n".join(lines)


def _active(hostname: str) -> list[dict]:
    """The tasks a worker is running now, asked over the broker."""
    replies = app.control.inspect(destination=[hostname], timeout=2.0).active() or {}
    return replies.get(hostname) or []


def _held_leases() -> dict[tuple[type, int], str]:
    """Every lease held right now: (model, pk) -> owner token."""
    now = timezone.now()
    return {(model, pk): owner for model in LEASED_MODELS
            for pk, owner in model.objects.filter(lease_until__gt=now).exclude(lease_owner="")
            .values_list("pk", "lease_owner")}


def _kill(cluster: Cluster, victim: str, survivor: str) -> list[str]:
    """SIGKILL ``victim`` (and its pool), then let the leases only it can still hold run out (see the
    module docstring); returns them."""
    cluster.workers[victim].kill()
    held = _held_leases()
    running = {task["id"] for task in _active(survivor)}
    _wait_for(f"{survivor} to finish the passes it had running at the kill",
              lambda: not running & {task["id"] for task in _active(survivor)}, timeout=60, diagnose=cluster.logs)
    now, expired = timezone.now(), []
    for (model, pk), owner in held.items():
        if model.objects.filter(pk=pk, lease_owner=owner, lease_until__gt=now).update(lease_until=now):
            expired.append(f"{model.__name__} {pk}")
    return expired


def _unrecorded_vms(backend) -> list[str]:
    """VMs the sim made that no instance row names yet: their create call has not been recorded."""
    recorded = Instance.objects.exclude(provider_instance_id="").values("provider_instance_id")
    return list(SimInstance.objects.filter(backend=backend).exclude(instance_id__in=recorded)
                .values_list("instance_id", flat=True))


def _leased(status: str) -> bool:
    return Instance.objects.filter(status=status, lease_until__gt=timezone.now()).exclude(lease_owner="").exists()


def _sim_backend(project, latency: float):
    return factories.BackendFactory(project=project, name="sim", type="sim", config={"latency": latency})


def _apply(api, doc: str) -> float:
    """Apply through the API (202); returns how long the request took."""
    started = time.monotonic()
    response = api.post("/api/v1/projects/main/apply/", data=doc, content_type="application/yaml")
    assert response.status_code == 202, response.content
    return time.monotonic() - started


def _assert_whole_fleet(backend, diagnose) -> None:
    """Exactly NODES instances, all up, each with its own VM; the sim has those VMs and no other."""
    fleet = Fleet.objects.get(name="chaos")
    instances = list(Instance.objects.filter(fleet=fleet))
    live_vms = SimInstance.objects.filter(backend=backend, state__in=("provisioning", "running"))
    recorded = {i.provider_instance_id for i in instances}
    assert fleet.status == "active", diagnose()
    assert len(instances) == NODES and all(i.status == "idle" for i in instances), diagnose()  # none lost, none extra
    assert "" not in recorded and len(recorded) == NODES, diagnose()  # every instance has its own VM
    assert SimInstance.objects.filter(backend=backend).count() == NODES, diagnose()  # no duplicate VM, ever
    assert set(live_vms.values_list("instance_id", flat=True)) == recorded, diagnose()  # and no orphan
    assert set(live_vms.values_list("client_token", flat=True)) == {i.client_token for i in instances}, diagnose()


# --- the tests ----------------------------------------------------------------------------------


def test_a_worker_killed_while_both_provision_leaves_no_duplicate_no_orphan_and_loses_nothing(cluster, project,
                                                                                                api):
    backend = _sim_backend(project, LATENCY)
    first, second = cluster.start_worker("chaos-a"), cluster.start_worker("chaos-b")
    cluster.start_beat()
    cluster.wait_ready()
    _apply(api, FLEET_YAML)
    chosen = {}

    def creates_in_flight() -> bool:
        # Some VMs exist already, a pending row is leased (its create call is under way), and one of
        # the workers is running the provisioner: that one dies.
        if SimInstance.objects.filter(backend=backend).count() < 2 or not _leased("pending"):
            return False
        for victim, survivor in ((first, second), (second, first)):
            if any(task["name"] == "fleets.process_instances" for task in _active(victim)) and _leased("pending"):
                chosen.update(victim=victim, survivor=survivor, world=_world(backend))
                return True
        return False

    _wait_for("a worker provisioning with creates in flight", creates_in_flight, timeout=60,
              diagnose=lambda: _world(backend) + "\n" + cluster.logs(), check=cluster.check_alive)
    expired = _kill(cluster, chosen["victim"], chosen["survivor"])
    at_kill = f"killed {chosen['victim']}; leases only it held (expired): {expired}\nat the kill:\n{chosen['world']}"
    print(at_kill)
    diagnose = lambda: f"{at_kill}\n\nnow:\n{_world(backend)}\n{cluster.logs()}"  # noqa: E731

    took = _wait_for(f"the {NODES} instances to be up", lambda: Instance.objects.filter(status="idle").count() == NODES,
                     timeout=60, diagnose=diagnose, check=lambda: cluster.check_alive(dead=(chosen["victim"],)))
    print(f"all {NODES} instances up {took:.1f} s after the kill")
    time.sleep(2)  # a few more beat ticks: nothing may move once the fleet is whole
    _assert_whole_fleet(backend, diagnose)


def test_a_worker_killed_between_creating_vms_and_recording_them_leaves_no_duplicate(cluster, project, api):
    backend = _sim_backend(project, 0)
    _apply(api, FLEET_YAML)
    reconcile_fleets()  # the NODES pending rows, at once: one provisioner pass takes them as one batch
    backend.config = {"latency": LATENCY}
    backend.save(update_fields=["config"])
    worker = cluster.start_worker("chaos-a")
    standby = cluster.start_worker("chaos-b", standby=True)
    cluster.start_beat()
    cluster.wait_ready()
    # The batch's creates run one after another and are recorded together: wait for two VMs made and
    # not recorded yet, then kill the only worker that can be making them.
    _wait_for("two VMs created and not yet recorded", lambda: len(_unrecorded_vms(backend)) >= 2, timeout=60,
              diagnose=lambda: _world(backend) + "\n" + cluster.logs(), check=cluster.check_alive)
    cluster.take_over(standby)
    unrecorded, world = _unrecorded_vms(backend), _world(backend)
    expired = _kill(cluster, worker, standby)
    at_kill = f"killed {worker}; leases it held (expired): {expired}\nunrecorded VMs: {unrecorded}\n{world}"
    print(at_kill)
    diagnose = lambda: f"{at_kill}\n\nnow:\n{_world(backend)}\n{cluster.logs()}"  # noqa: E731
    assert any(item.startswith("Instance") for item in expired), diagnose()  # the kill interrupted the batch

    took = _wait_for(f"the {NODES} instances to be up", lambda: Instance.objects.filter(status="idle").count() == NODES,
                     timeout=60, diagnose=diagnose, check=lambda: cluster.check_alive(dead=(worker,)))
    print(f"all {NODES} instances up {took:.1f} s after the kill")
    time.sleep(2)
    _assert_whole_fleet(backend, diagnose)
    recorded = set(Instance.objects.values_list("provider_instance_id", flat=True))
    assert set(unrecorded) <= recorded, diagnose()  # the retried creates found the VMs the dead worker made


def test_a_worker_killed_while_terminating_leaves_every_vm_terminated(cluster, project, api, reconcile):
    backend = _sim_backend(project, 0)
    _apply(api, FLEET_YAML)
    reconcile()  # brought up in this process, without latency: the test is about what follows
    assert Instance.objects.filter(status="idle").count() == NODES, _world(backend)
    backend.config = {"latency": LATENCY}
    backend.save(update_fields=["config"])
    worker = cluster.start_worker("chaos-a")
    standby = cluster.start_worker("chaos-b", standby=True)
    cluster.start_beat()
    cluster.wait_ready()
    assert api.delete("/api/v1/projects/main/fleets/chaos/").status_code == 202

    def terminations_in_flight() -> bool:
        return SimInstance.objects.filter(backend=backend, state="terminated").exists() and _leased("terminating")

    _wait_for("terminations in flight", terminations_in_flight, timeout=60,
              diagnose=lambda: _world(backend) + "\n" + cluster.logs(), check=cluster.check_alive)
    cluster.take_over(standby)
    world = _world(backend)
    expired = _kill(cluster, worker, standby)
    at_kill = f"killed {worker}; leases it held (expired): {expired}\nat the kill:\n{world}"
    print(at_kill)
    diagnose = lambda: f"{at_kill}\n\nnow:\n{_world(backend)}\n{cluster.logs()}"  # noqa: E731
    assert any(item.startswith("Instance") for item in expired), diagnose()  # the kill interrupted the batch

    took = _wait_for("the fleet to be terminated", lambda: Fleet.objects.get(name="chaos").status == "terminated",
                     timeout=60, diagnose=diagnose, check=lambda: cluster.check_alive(dead=(worker,)))
    print(f"fleet terminated {took:.1f} s after the kill")
    instances = list(Instance.objects.filter(fleet__name="chaos"))
    vms = dict(SimInstance.objects.filter(backend=backend).values_list("instance_id", "state"))
    assert len(instances) == NODES and all(i.status == "terminated" for i in instances), diagnose()
    assert all(i.termination_reason == "fleet_deleted" for i in instances), diagnose()
    assert {i.provider_instance_id for i in instances} == set(vms), diagnose()  # none lost, none unknown
    assert set(vms.values()) == {"terminated"}, diagnose()  # no VM left running


def test_a_redis_restart_only_delays_work(cluster, project, api):
    backend = _sim_backend(project, 0.2)
    cluster.start_worker("chaos-a")
    cluster.start_beat()
    cluster.wait_ready()
    diagnose = lambda: f"{_world(backend)}\n{cluster.logs()}"  # noqa: E731

    def task(name: str) -> str:
        return f"type: task\nname: {name}\ncommands: ['sleep 2']\nresources: {{gpu: 1}}\nfleets: [chaos]\n"

    _apply(api, "type: fleet\nname: chaos\nnodes: 2\nbackends: [sim]\nresources: {gpu: H100:8}\nblocks: 8\n")
    _wait_for("the fleet to be up", lambda: Instance.objects.filter(status="idle").count() == 2, timeout=60,
              diagnose=diagnose, check=cluster.check_alive)
    for n in range(4):
        _apply(api, task(f"before-{n}"))
    _wait_for("a job to run", lambda: Job.objects.filter(status="running").exists(), timeout=60,
              diagnose=diagnose, check=cluster.check_alive)

    cluster.redis.stop()
    down = time.monotonic()
    # The broker is down: the on-commit kicks of these are lost, and the API still accepts them.
    requests = [round(_apply(api, task(f"during-{n}")), 1) for n in range(2)]
    time.sleep(max(0.0, 2 - (time.monotonic() - down)))
    cluster.redis.start()
    print(f"redis down for {time.monotonic() - down:.1f} s; the applies meanwhile took {requests} s")

    took = _wait_for("every run to be done", lambda: not Run.objects.exclude(status="done").exists(), timeout=60,
                     diagnose=diagnose, check=cluster.check_alive)
    print(f"all runs done {took:.1f} s after redis came back")
    assert Run.objects.count() == 6, diagnose()
    assert not Job.objects.exclude(status__in=JOB_FINISHED_STATES).exists(), diagnose()  # no stuck job
    assert set(Job.objects.values_list("status", flat=True)) == {"done"}, diagnose()
    assert Fleet.objects.get(name="chaos").status == "active", diagnose()
    up = Instance.objects.filter(fleet__name="chaos", status="idle", busy_blocks=0)
    assert up.count() == Instance.objects.filter(fleet__name="chaos").count() == 2, diagnose()
    cluster.check_alive()  # beat rode out the restart (and the worker, or its replacement, is up)


def test_a_worker_with_a_task_in_flight_survives_a_redis_restart(cluster, tmp_path):
    """One task running (acks_late, so its message is unacknowledged) while the broker restarts: the
    worker reconnects and lives on (Celery 5.7.0 exits here, ``CELERY_REDIS_RESTART_CRASH``)."""
    worker = cluster.start_worker("chaos-a", include="tests.timelimit_tasks")
    cluster.wait_ready(beat=False)
    folder = tmp_path / "marks"
    folder.mkdir()
    app.send_task("tests.stuck", args=[str(folder)])  # sleeps until its hard time limit (3 s) kills it
    _wait_for("the task to start", lambda: any(folder.glob("stuck-started-*")), timeout=30, diagnose=cluster.logs,
              check=cluster.check_alive)
    cluster.redis.stop()
    cluster.redis.start()
    log = cluster.workers[worker]
    try:
        _wait_for("the worker to reconnect", lambda: log.text().count("Connected to redis") >= 2, timeout=30,
                  diagnose=cluster.logs, check=cluster.check_alive)
        time.sleep(STUCK_TIME_LIMIT + 2)  # the crash comes once the running task is over
        cluster.check_alive()
    except AssertionError as err:
        if CELERY_CRASH_SIGNATURE not in log.text():  # not the known bug: a real failure, not an expected one
            raise RuntimeError(f"the worker failed another way:\n{cluster.logs()}") from err
        raise
