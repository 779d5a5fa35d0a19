"""Chaos for volume attachments, with the real processes of ``tests.test_chaos`` (its own Redis, real
``celery worker`` processes and beat, on PostgreSQL): a worker SIGKILLed in the middle of an attach
batch, or of a detach batch, and a stand-by worker taking over once the dead worker's leases have run
out. Afterwards nothing is half done: every volume the provider attached is recorded as attached
exactly once and the workload started once; every detach the provider confirmed is recorded, the
job finished and its blocks given back; and a stuck detach stays visible until an abort forces it.

The sim answers every call after ``LATENCY`` seconds and only then acts, and a batch records its
outcomes only after all of its calls. With two volumes in one batch, a kill in the second call finds
the first volume done at the provider and not recorded, and the second one in flight: both halves
of "half done" at once.
"""

import time

import pytest

from backends.drivers import sim_faults
from backends.sim_models import SimJob, SimVolume
from core.models import Event
from fleets.models import Instance
from runs.models import JOB_FINISHED_STATES, Job, Run
from tests import test_chaos as chaos
from volumes.models import Volume, VolumeAttachment

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

cluster = chaos.cluster  # the fixture: broker, workers and beat of one test

P = "/api/v1/projects/main"
LATENCY = 2.0  # seconds per sim call: the kill lands well inside one
FLEET_YAML = "type: fleet\nname: chaos\nnodes: 1\nbackends: [sim]\nresources: {cpu: 2, gpu: 0}\n"
PAIR = ("data-a", "data-b")


def _task(volumes: tuple[str, ...]) -> str:
    mounts = ", ".join(f"{name}:/mnt/{name}" for name in volumes)
    return (f"type: task\nname: train\ncommands: [serve]\nresources: {{cpu: 2, gpu: 0}}\nfleets: [chaos]\n"
            f"volumes: [{mounts}]\n")


def _fleet_and_volumes(project, api, reconcile, volumes: tuple[str, ...]):
    """One instance up and ``volumes`` active in its zone, brought up in this process without latency."""
    backend = chaos._sim_backend(project, 0)
    chaos._apply(api, FLEET_YAML)
    reconcile()
    instance = Instance.objects.get(fleet__name="chaos", status="idle")
    for name in volumes:
        chaos._apply(api, f"type: volume\nname: {name}\nbackend: sim\nregion: {instance.region}\n"
                          f"availability_zone: {instance.availability_zone}\nsize: 10GB\n")
    reconcile()
    assert Volume.objects.filter(status="active").count() == len(volumes), chaos._world(backend)
    return backend, instance


def _slow_down(backend) -> None:
    backend.config = {"latency": LATENCY}
    backend.save(update_fields=["config"])


def _start_cluster(cluster) -> tuple[str, str]:
    """One worker on the default queue, one on stand-by, and beat; returns their hostnames."""
    worker, standby = cluster.start_worker("chaos-a"), cluster.start_worker("chaos-b", standby=True)
    cluster.start_beat()
    cluster.wait_ready()
    return worker, standby


def _stop(api, abort: bool = False) -> None:
    assert api.post(f"{P}/runs/train/stop/", {"abort": abort}, format="json").status_code == 202


def _world(backend) -> str:
    """``tests.test_chaos._world`` plus what a volume failure needs: attachments, the sim's volumes
    and workloads, and the volume events."""
    lines = [chaos._world(backend), "attachments (volume, status, force, device, detach_sent, lease_owner, error):"]
    lines += [f"  {row}" for row in VolumeAttachment.objects.order_by("pk").values_list(
        "volume__name", "status", "force", "device_name", "detach_sent", "lease_owner", "error")]
    lines.append("sim volumes (name, state, attached_instance_id, device, detach_requested, detach_forced):")
    lines += [f"  {row}" for row in SimVolume.objects.filter(backend=backend).order_by("pk").values_list(
        "name", "state", "attached_instance_id", "device_name", "detach_requested", "detach_forced")]
    lines.append("sim jobs (job_name, workload_id, state):")
    lines += [f"  {row}" for row in SimJob.objects.filter(backend=backend).values_list("job_name", "workload_id",
                                                                                         "state")]
    lines.append("volume events (name, kind, message):")
    lines += [f"  {row}" for row in Event.objects.filter(resource_type="volume").order_by("pk").values_list(
        "resource_name", "kind", "message")]
    return "\n".join(lines)


def _all_leased(status: str, count: int) -> bool:
    """``count`` attachments, every one in ``status`` and held by a pass."""
    rows = list(VolumeAttachment.objects.values_list("status", "lease_owner"))
    return len(rows) == count and all(s == status and owner for s, owner in rows)


def _kill_in_flight(cluster, backend, worker: str, standby: str, in_flight) -> tuple[str, object]:
    """Hand the queue to ``standby``, check the batch is still ``in_flight`` and SIGKILL ``worker``;
    its leases run out (``tests.test_chaos._kill``). Returns what the world was at the kill and a
    ``diagnose`` for the assertions that follow."""
    cluster.take_over(standby)
    assert in_flight(), f"the batch moved on before the kill\n{_world(backend)}"
    world = _world(backend)
    expired = chaos._kill(cluster, worker, standby)
    at_kill = f"killed {worker}; leases it held (expired): {expired}\nat the kill:\n{world}"
    print(at_kill)

    def diagnose() -> str:
        return f"{at_kill}\n\nnow:\n{_world(backend)}\n{cluster.logs()}"

    assert any(item.startswith("VolumeAttachment") for item in expired), diagnose()  # the kill hit the batch
    return world, diagnose


def _events(name: str, kind: str) -> int:
    return Event.objects.filter(resource_type="volume", resource_name=name, kind=kind).count()


def _assert_nothing_in_between(diagnose) -> None:
    assert not VolumeAttachment.objects.filter(status__in=("attaching", "detaching")).exists(), diagnose()
    assert not Job.objects.exclude(status__in=JOB_FINISHED_STATES).exists(), diagnose()
    instance = Instance.objects.get(fleet__name="chaos")
    assert (instance.status, instance.busy_blocks) == ("idle", 0), diagnose()  # its blocks are all given back


# --- the tests ----------------------------------------------------------------------------------


def test_a_worker_killed_mid_attach_leaves_each_volume_attached_once_and_the_workload_started_once(
        cluster, project, api, reconcile):
    backend, instance = _fleet_and_volumes(project, api, reconcile, PAIR)
    _slow_down(backend)
    worker, standby = _start_cluster(cluster)
    chaos._apply(api, _task(PAIR))
    on_instance = SimVolume.objects.filter(backend=backend, attached_instance_id=instance.provider_instance_id)

    def attach_in_flight() -> bool:
        # The first volume attached at the provider, not recorded; the second one's call under way.
        return _all_leased("attaching", 2) and on_instance.count() == 1

    chaos._wait_for("the first attach done and the second in flight", attach_in_flight, timeout=60,
                    diagnose=lambda: _world(backend) + "\n" + cluster.logs(), check=cluster.check_alive)
    _, diagnose = _kill_in_flight(cluster, backend, worker, standby, attach_in_flight)
    assert on_instance.count() == 1, diagnose()  # the kill came before the second attach reached the provider

    took = chaos._wait_for("the run to be running", lambda: Run.objects.get(name="train").status == "running",
                           timeout=60, diagnose=diagnose, check=lambda: cluster.check_alive(dead=(worker,)))
    print(f"run running {took:.1f} s after the kill")
    time.sleep(2)  # a few more beat ticks: nothing may move once the job runs
    job = Job.objects.get(run__name="train")
    assert job.status == "running", diagnose()
    mounts = []
    for name in PAIR:
        attachments = list(VolumeAttachment.objects.filter(volume__name=name))
        assert len(attachments) == 1, diagnose()  # no second attachment for a retried attach
        attachment = attachments[0]
        assert (attachment.status, attachment.instance_id, attachment.job_id) == ("attached", instance.pk, job.pk)
        assert attachment.device_name and attachment.attached_at is not None, diagnose()
        sim_volume = SimVolume.objects.get(backend=backend, name=name)
        assert (sim_volume.attached_instance_id, sim_volume.device_name, sim_volume.detach_requested) == (
            instance.provider_instance_id, attachment.device_name, False), diagnose()
        assert _events(name, "attached") == 1, diagnose()
        mounts.append({"path": f"/mnt/{name}", "volume_id": sim_volume.volume_id,
                       "device_name": attachment.device_name})
    assert len({m["device_name"] for m in mounts}) == 2, diagnose()
    workloads = list(SimJob.objects.filter(backend=backend))
    assert len(workloads) == 1, diagnose()  # started exactly once, after both attaches
    assert (workloads[0].workload_id, workloads[0].state) == (job.workload_id, "running"), diagnose()
    assert workloads[0].mounts == mounts, diagnose()


def test_a_worker_killed_mid_detach_leaves_every_volume_detached_and_the_run_terminated(
        cluster, project, api, reconcile):
    backend, instance = _fleet_and_volumes(project, api, reconcile, PAIR)
    chaos._apply(api, _task(PAIR))
    reconcile()
    assert Run.objects.get(name="train").status == "running", _world(backend)
    _slow_down(backend)
    worker, standby = _start_cluster(cluster)
    _stop(api)
    sim_volumes = SimVolume.objects.filter(backend=backend)

    def detach_in_flight() -> bool:
        # The first volume detached at the provider, not recorded; the second one's detach asked
        # and its confirmation under way.
        return (_all_leased("detaching", 2) and sim_volumes.filter(attached_instance_id="").count() == 1
                and sim_volumes.filter(detach_requested=True).exclude(attached_instance_id="").count() == 1)

    chaos._wait_for("the first detach done and the second in flight", detach_in_flight, timeout=60,
                    diagnose=lambda: _world(backend) + "\n" + cluster.logs(), check=cluster.check_alive)
    _, diagnose = _kill_in_flight(cluster, backend, worker, standby, detach_in_flight)

    took = chaos._wait_for("the run to be terminated", lambda: Run.objects.get(name="train").status == "terminated",
                           timeout=60, diagnose=diagnose, check=lambda: cluster.check_alive(dead=(worker,)))
    print(f"run terminated {took:.1f} s after the kill")
    run = Run.objects.get(name="train")
    assert run.termination_reason == "stopped_by_user", diagnose()
    for name in PAIR:
        attachments = list(VolumeAttachment.objects.filter(volume__name=name))
        assert len(attachments) == 1, diagnose()
        attachment = attachments[0]
        assert (attachment.status, attachment.force, attachment.force_sent) == ("detached", False, False), diagnose()
        assert attachment.detached_at is not None, diagnose()
        sim_volume = SimVolume.objects.get(backend=backend, name=name)
        assert (sim_volume.state, sim_volume.attached_instance_id, sim_volume.detach_requested) == (
            "available", "", False), diagnose()
        assert _events(name, "detached") == 1, diagnose()
    assert SimJob.objects.get(backend=backend).state == "stopped", diagnose()
    _assert_nothing_in_between(diagnose)


def test_a_stuck_detach_survives_a_kill_until_an_abort_forces_it(cluster, project, api, reconcile):
    backend, instance = _fleet_and_volumes(project, api, reconcile, ("data",))
    chaos._apply(api, _task(("data",)))
    reconcile()
    assert Run.objects.get(name="train").status == "running", _world(backend)
    sim_faults.add_fault(backend, {"kind": "stuck_detach", "volume": "data", "forced_ok": True})
    _slow_down(backend)
    worker, standby = _start_cluster(cluster)
    _stop(api)
    sim_volume = SimVolume.objects.filter(backend=backend, name="data")

    def detach_in_flight() -> bool:
        # The detach asked at the provider, not recorded; the first poll of it under way.
        return _all_leased("detaching", 1) and sim_volume.filter(detach_requested=True).exists()

    chaos._wait_for("the detach asked and its poll in flight", detach_in_flight, timeout=60,
                    diagnose=lambda: _world(backend) + "\n" + cluster.logs(), check=cluster.check_alive)
    _, diagnose = _kill_in_flight(cluster, backend, worker, standby, detach_in_flight)
    alive = lambda: cluster.check_alive(dead=(worker,))  # noqa: E731

    # The stand-by sends the detach again and polls it: still stuck, and shown as such.
    chaos._wait_for("the stand-by to poll the stuck detach", lambda: VolumeAttachment.objects.filter(
        detach_sent=True, lease_owner="").exists(), timeout=60, diagnose=diagnose, check=alive)
    time.sleep(2 * LATENCY)  # another poll or two: a stuck detach is never taken for a detach
    run, job = Run.objects.get(name="train"), Job.objects.get(run__name="train")
    attachment = VolumeAttachment.objects.get()
    assert (run.status, job.status, attachment.status, attachment.force) == (
        "terminating", "terminating", "detaching", False), diagnose()
    assert "waiting for volume data to detach" in run.status_message, diagnose()
    assert sim_volume.get().attached_instance_id == instance.provider_instance_id, diagnose()
    assert Instance.objects.get(pk=instance.pk).busy_blocks == 1, diagnose()  # the blocks wait for the detach

    _stop(api, abort=True)
    took = chaos._wait_for("the run to be terminated", lambda: Run.objects.get(name="train").status == "terminated",
                           timeout=60, diagnose=diagnose, check=alive)
    print(f"run terminated {took:.1f} s after the abort")
    run, attachment = Run.objects.get(name="train"), VolumeAttachment.objects.get()
    assert run.termination_reason == "aborted_by_user", diagnose()
    assert (attachment.status, attachment.force, attachment.force_sent) == ("detached", True, True), diagnose()
    assert (sim_volume.get().attached_instance_id, sim_volume.get().state) == ("", "available"), diagnose()
    assert _events("data", "force_detach") >= 1 and _events("data", "detached") == 1, diagnose()
    _assert_nothing_in_between(diagnose)
