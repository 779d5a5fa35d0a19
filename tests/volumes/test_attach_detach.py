"""Volumes on jobs end to end through the API and the sim: attach before start, detach before finish,
force on abort and after stop_duration, errors that are never taken for a detach."""

import pytest

from backends.drivers import sim_faults
from core.models import Event
from fleets.models import Instance
from runs.models import Job
from volumes.models import VolumeAttachment

pytestmark = pytest.mark.django_db

P = "/api/v1/projects/main"
FLEET = "type: fleet\nname: cpu\nnodes: 0..4\nbackends: [sim]\nresources: {cpu: 2, gpu: 0}\n"


def volume(apply, name: str, region: str = "eu-west-1", zone: str | None = None) -> None:
    zone_line = f"availability_zone: {zone}\n" if zone else ""
    apply(f"type: volume\nname: {name}\nbackend: sim\nregion: {region}\n{zone_line}size: 10GB\n")


def task(apply, name: str, mounts: str, extra: str = "") -> None:
    apply(f"type: task\nname: {name}\ncommands: [serve]\nresources: {{cpu: 2, gpu: 0}}\n"
          f"volumes: {mounts}\n{extra}")


def run_of(api, name: str) -> dict:
    return api.get(f"{P}/runs/{name}/").json()


def attachment_of(api, name: str) -> dict:
    return api.get(f"{P}/volumes/{name}/").json()["attachments"][0]


def stop(api, name: str, abort: bool = False) -> None:
    assert api.post(f"{P}/runs/{name}/stop/", {"abort": abort}, format="json").status_code == 202


@pytest.fixture
def fleet(sim_backend, apply, reconcile):
    apply(FLEET)
    reconcile()


def test_clean_path_attaches_before_start_and_detaches_without_force(fleet, api, apply, reconcile, sim_backend):
    volume(apply, "data")
    reconcile()
    task(apply, "train", "[data:/data]")
    reconcile()
    run = run_of(api, "train")
    assert run["status"] == "running", run
    job = Job.objects.get(run__name="train")
    assert job.volumes == [{"name": "data", "path": "/data"}]
    attached = attachment_of(api, "data")
    assert attached["status"] == "attached" and attached["device_name"] == "/dev/sdf"
    sim_job = sim_backend.sim_jobs.get()
    assert sim_job.mounts == [{"path": "/data", "volume_id": job.attachments.get().volume.volume_id,
                               "device_name": "/dev/sdf"}]
    stop(api, "train")
    reconcile()
    run = run_of(api, "train")
    assert (run["status"], run["termination_reason"]) == ("terminated", "stopped_by_user")
    detached = attachment_of(api, "data")
    assert detached["status"] == "detached" and detached["force"] is False
    assert sim_backend.sim_volumes.get().attached_instance_id == ""
    kinds = list(Event.objects.filter(resource_type="volume", resource_name="data").values_list("kind", flat=True))
    assert {"attached", "detach_requested", "detached"} <= set(kinds)
