"""The local driver: this machine as one instance, jobs as real processes, volumes as directories."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from backends.drivers import local_host, local_jobs
from backends.drivers.base import FatalError, JobLaunch, NotFoundError
from backends.drivers.local import LocalDriver
from backends.drivers.registry import get_driver
from core.errors import InvalidInput
from tests import factories

pytestmark = pytest.mark.django_db
MANAGED = {"stackyard-managed": "true", "stackyard-project": "main"}


def kill_jobs(data_dir) -> None:
    """Kill the process group of every job started under ``data_dir``: no test leaves a process behind."""
    for process_file in data_dir.rglob("jobs/*/process.json"):
        try:
            os.killpg(json.loads(process_file.read_text())["pgid"], signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def group_of(driver, workload_id: str) -> int:
    return json.loads((driver.jobs_dir / workload_id / "process.json").read_text())["pgid"]


def group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is in the group, as ``ps`` sees it."""
    out = subprocess.run(["ps", "-eo", "pgid=,stat="], capture_output=True, text=True, check=True).stdout
    return any(int(row.split()[0]) == pgid and not row.split()[1].startswith("Z")
               for row in out.splitlines() if row.strip())


@pytest.fixture
def data_dir(settings, tmp_path):
    settings.DATA_DIR = tmp_path
    yield tmp_path
    kill_jobs(tmp_path)


@pytest.fixture
def backend(project, data_dir):
    return factories.BackendFactory(project=project, name="local", type="local")


@pytest.fixture
def driver(backend) -> LocalDriver:
    return get_driver(backend)


@pytest.fixture
def instance_id(driver) -> str:
    return driver.create_instance(name="here-0", offer=driver.offers()[0], tags=MANAGED, client_token="tok-0")


def start(driver, instance_id, commands, *, token="", env=None, mounts=None, name="job-0-0") -> str:
    [result] = driver.start_jobs(jobs=[JobLaunch(name, instance_id, commands, env or {}, client_token=token,
                                                 mounts=mounts or [])])
    if isinstance(result, Exception):
        raise result
    return result


def wait_finished(driver, workload_id, timeout=10.0):
    deadline = time.monotonic() + timeout
    while (state := driver.poll_job(workload_id=workload_id)).status == "running":
        assert time.monotonic() < deadline, f"{workload_id} still running after {timeout} s"
        time.sleep(0.05)
    return state


# --- config, offers, instances ----------------------------------------------------------------------


def test_config_is_empty_or_names_a_data_dir_inside_the_data_dir(project, data_dir):
    assert LocalDriver.validate_config({}) == {}
    assert LocalDriver.validate_config({"data_dir": "gpu-box"}) == {"data_dir": "gpu-box"}
    for bad in ({"data_dir": "/etc"}, {"data_dir": "../up"}, {"data_dir": ""}, {"regions": ["x"]}):
        with pytest.raises(InvalidInput) as exc:
            LocalDriver.validate_config(bad)
        assert exc.value.code == "invalid_config"
    other = get_driver(factories.BackendFactory(project=project, name="other", type="local",
                                                config={"data_dir": "gpu-box"}))
    assert other.root == data_dir / "gpu-box"


def test_the_one_offer_is_this_machine(driver):
    [offer] = driver.offers()
    assert (offer.instance_type, offer.region, offer.availability_zone, offer.price, offer.spot) == (
        "local", "local", "local", 0.0, False)
    assert offer.resources["cpus"] == os.cpu_count()
    assert offer.resources["memory_mib"] > 0 and offer.resources["disk_gb"] > 0
    assert driver.locations() == {"local": ["local"]}


def test_gpus_come_from_nvidia_smi_when_it_is_installed(driver, tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'NVIDIA A100-SXM4-80GB, 81920 MiB'\necho 'NVIDIA A100-SXM4-80GB, 81920 MiB'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(local_host, "_cache", {})
    assert driver.offers()[0].resources["gpus"] == [{"name": "A100", "memory_mib": 81920}] * 2
    assert [local_host.gpu_model(n) for n in ("NVIDIA GeForce RTX 4090", "Tesla T4", "NVIDIA H100 80GB HBM3")] == [
        "RTX4090", "T4", "H100"]


def test_instances_are_idempotent_on_their_token_and_terminate(driver, instance_id):
    offer = driver.offers()[0]
    assert driver.create_instance(name="here-0", offer=offer, tags=MANAGED, client_token="tok-0") == instance_id
    assert driver.find_instance(client_token="tok-0") == instance_id
    assert driver.instance_state(instance_id=instance_id) == "running"
    assert [r.provider_id for r in driver.list_tagged_resources()] == [instance_id]
    driver.terminate_instance(instance_id=instance_id)
    driver.terminate_instance(instance_id=instance_id)  # a no-op the second time
    assert driver.instance_state(instance_id=instance_id) == "terminated"
    assert driver.list_tagged_resources() == []
    with pytest.raises(NotFoundError):
        driver.instance_state(instance_id="local-nowhere")
    with pytest.raises(FatalError):
        driver.create_instance(name="x", offer=offer.__class__("p4d", "local", "local", {}, 0, False))


# --- jobs ------------------------------------------------------------------------------------------------


def test_a_failing_task_ends_failed_with_its_exit_status_and_its_output(driver, instance_id):
    workload_id = start(driver, instance_id, ["echo hello; exit 3", "echo never"], token="t-1")
    state = wait_finished(driver, workload_id)
    assert (state.status, state.exit_status, state.failure) == ("failed", 3, "error")
    assert driver.job_logs(workload_id=workload_id) == ["hello"]


def test_commands_run_in_order_stop_at_the_first_failure_and_see_their_env(driver, instance_id, monkeypatch):
    monkeypatch.setenv("DJANGO_SECRET_KEY", "server-secret")
    workload_id = start(driver, instance_id, ["echo one", "echo two >&2", 'echo "a=$A k=$DJANGO_SECRET_KEY"',
                                              "false", "echo never"], token="t-2", env={"A": "1"})
    state = wait_finished(driver, workload_id)
    assert (state.status, state.exit_status) == ("failed", 1)
    assert driver.job_logs(workload_id=workload_id) == ["one", "two", "a=1 k="]  # no server setting leaks
    assert driver.job_logs(workload_id=workload_id, tail=1) == ["a=1 k="]
    ok = start(driver, instance_id, ["pwd"], token="t-3")
    assert wait_finished(driver, ok).status == "done"
    assert driver.job_logs(workload_id=ok)[0].endswith("/jobs/t-3/work")


def test_a_long_job_is_stopped_within_the_timeout_and_its_group_is_gone(driver, instance_id):
    workload_id = start(driver, instance_id, ["sleep 600"], token="t-sleep")
    pgid = group_of(driver, workload_id)
    assert driver.poll_job(workload_id=workload_id).status == "running" and group_alive(pgid)
    started = time.monotonic()
    assert driver.stop_jobs(workload_ids=[workload_id]) == {workload_id: None}
    assert time.monotonic() - started < local_jobs.STOP_WAIT_SECONDS + local_jobs.KILL_WAIT_SECONDS
    assert not group_alive(pgid)
    assert driver.poll_job(workload_id=workload_id).status == "stopped"
    assert driver.stop_jobs(workload_ids=[workload_id]) == {workload_id: None}  # stopping again is a no-op


def test_stop_job_returns_at_once_and_a_job_ignoring_sigterm_is_killed_past_the_grace(driver, instance_id,
                                                                                       monkeypatch):
    monkeypatch.setattr(local_jobs, "STOP_GRACE_SECONDS", 0.5)
    workload_id = start(driver, instance_id, ["trap '' TERM", "sleep 600"], token="t-stubborn")
    pgid = group_of(driver, workload_id)
    time.sleep(0.2)  # the script has set its trap
    started = time.monotonic()
    driver.stop_job(workload_id=workload_id)
    assert time.monotonic() - started < 0.5
    assert driver.poll_job(workload_id=workload_id).status == "running"  # it ignores SIGTERM
    time.sleep(0.6)
    assert wait_finished(driver, workload_id, timeout=3).status == "stopped"  # a poll past the grace killed it
    assert not group_alive(pgid)


def test_a_job_outlives_the_worker_that_started_it(driver, instance_id, data_dir):
    """Started by another process, which then exits: any driver, in any process, polls it."""
    code = ("from types import SimpleNamespace as NS\n"
            "from backends.drivers.base import JobLaunch\n"
            "from backends.drivers.local import LocalDriver\n"
            "d = LocalDriver(NS(project=NS(name='main'), name='local', config={}))\n"
            f"print(d.start_jobs(jobs=[JobLaunch('job-0-0', {instance_id!r}, ['sleep 1', 'echo late'], {{}},"
            " client_token='t-other')])[0])\n")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "STACKYARD_DATA_DIR": str(data_dir)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "t-other", out.stderr
    another = LocalDriver(driver.backend)  # another worker
    assert another.poll_job(workload_id="t-other").status == "running"
    state = wait_finished(another, "t-other")
    assert (state.status, state.exit_status) == ("done", 0)
    assert driver.job_logs(workload_id="t-other") == ["late"]


def test_a_start_retried_with_its_token_answers_the_first_workload(driver, instance_id):
    first = start(driver, instance_id, ["echo started", "sleep 0.3"], token="t-once")
    again = start(driver, instance_id, ["echo started", "sleep 0.3"], token="t-once")
    assert again == first
    wait_finished(driver, first)
    assert driver.job_logs(workload_id=first) == ["started"]  # one process only
    driver.terminate_instance(instance_id=instance_id)
    assert start(driver, instance_id, ["echo started"], token="t-once") == first  # whatever happened since
    # The token of a job from another database (the data dir outlived it) starts a new workload.
    fresh = driver.create_instance(name="here-1", offer=driver.offers()[0], client_token="tok-1")
    assert start(driver, fresh, ["echo new"], token="t-once", name="other-0-0") == first
    wait_finished(driver, first)
    assert driver.job_logs(workload_id=first) == ["new"]
    with pytest.raises(NotFoundError):
        driver.poll_job(workload_id="nothing-here")


def test_terminating_the_instance_stops_its_jobs_as_interrupted(driver, instance_id):
    workload_id = start(driver, instance_id, ["sleep 600"], token="t-on-instance")
    driver.terminate_instance(instance_id=instance_id)
    state = driver.poll_job(workload_id=workload_id)
    assert (state.status, state.failure) == ("failed", "interruption")
    with pytest.raises(FatalError):
        start(driver, instance_id, ["true"], token="t-too-late")


# --- volumes -------------------------------------------------------------------------------------------


def test_a_volume_directory_keeps_its_files_from_one_job_to_the_next(driver, instance_id):
    volume = driver.create_volume(name="my-data", region="local", availability_zone=None, size_gb=10, tags=MANAGED,
                                  client_token="v-1")
    assert driver.create_volume(name="my-data", region="local", availability_zone=None, size_gb=10,
                                client_token="v-1") == volume
    assert (volume.volume_id, volume.region, volume.availability_zone) == ("local-vol-my-data", "local", "local")
    device = driver.attach_volume(volume_id=volume.volume_id, instance_id=instance_id, region="local")
    mounts = [{"path": "/data", "volume_id": volume.volume_id, "device_name": device}]
    first = start(driver, instance_id, ["echo kept > data/file", 'echo "$STACKYARD_VOLUME_MY_DATA"'], token="t-w",
                  mounts=mounts)
    assert wait_finished(driver, first).status == "done"
    directory = driver.job_logs(workload_id=first)[0]
    assert directory.endswith("/volumes/my-data") and (driver.root / device / "file").read_text() == "kept\n"

    driver.detach_volume(volume_id=volume.volume_id, instance_id=instance_id, force=False)
    assert driver.is_volume_detached(volume_id=volume.volume_id, instance_id=instance_id)
    with pytest.raises(FatalError):  # a job never starts without its data
        start(driver, instance_id, ["true"], token="t-no-volume", mounts=mounts)
    driver.attach_volume(volume_id=volume.volume_id, instance_id=instance_id)
    second = start(driver, instance_id, ['cat "$STACKYARD_VOLUME_MY_DATA/file"', "cat data/file"], token="t-r",
                   mounts=mounts)
    assert wait_finished(driver, second).status == "done"
    assert driver.job_logs(workload_id=second) == ["kept", "kept"]


def test_a_volume_is_deleted_only_once_detached(driver, instance_id):
    volume = driver.create_volume(name="scratch", region="local", availability_zone="local", size_gb=1, tags=MANAGED)
    driver.attach_volume(volume_id=volume.volume_id, instance_id=instance_id)
    other = driver.create_instance(name="here-1", offer=driver.offers()[0], client_token="tok-1")
    with pytest.raises(FatalError):
        driver.attach_volume(volume_id=volume.volume_id, instance_id=other)
    with pytest.raises(FatalError):
        driver.delete_volume(volume_id=volume.volume_id)
    assert "local-vol-scratch" in [r.provider_id for r in driver.list_tagged_resources()]
    driver.detach_volume(volume_id=volume.volume_id, instance_id=instance_id, force=True)
    driver.delete_volume(volume_id=volume.volume_id)
    driver.delete_volume(volume_id=volume.volume_id)  # a no-op the second time
    assert not (driver.root / "volumes" / "scratch").exists()
    with pytest.raises(FatalError):
        driver.create_volume(name="x", region="eu-west-1", availability_zone=None, size_gb=1)


def test_an_existing_directory_registers_as_an_external_volume(driver, instance_id):
    (driver.root / "volumes" / "datasets").mkdir(parents=True)
    assert driver.register_volume(volume_id="local-vol-datasets").volume_id == "local-vol-datasets"
    for missing in ("local-vol-nothing", "local-vol-../etc", "vol-123"):
        with pytest.raises(NotFoundError):
            driver.register_volume(volume_id=missing)


def test_instance_volumes_are_linked_and_named_in_the_env(driver, instance_id, tmp_path):
    host_dir = tmp_path / "host-cache"
    workload_id = start(driver, instance_id, ["echo hi > cache/f", 'echo "$STACKYARD_VOLUME_CACHE"'], token="t-i",
                        mounts=[{"path": "/root/cache", "instance_path": str(host_dir)}])
    assert wait_finished(driver, workload_id).status == "done"
    assert driver.job_logs(workload_id=workload_id) == [str(host_dir)]
    assert (host_dir / "f").read_text() == "hi\n"
