"""Volumes on jobs end to end through the API and the sim: attach before start, detach before finish,
force on abort and after stop_duration, errors that are never taken for a detach."""

import pytest

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


def fault(api, **params) -> None:
    response = api.post(f"{P}/backends/sim/faults/", params, format="json")
    assert response.status_code in (200, 201), response.content


def running_with(api, apply, reconcile, name: str = "train", mounts: str = "[data:/data]", extra: str = "") -> None:
    task(apply, name, mounts, extra)
    reconcile()
    assert run_of(api, name)["status"] == "running", run_of(api, name)


def test_stuck_detach_keeps_the_run_terminating_until_abort_forces_it(fleet, api, apply, reconcile, sim_backend):
    volume(apply, "data")
    reconcile()
    running_with(api, apply, reconcile)
    fault(api, kind="stuck_detach", volume="data", forced_ok=True)
    stop(api, "train")
    for _ in range(5):
        reconcile()
        run = run_of(api, "train")
        assert run["status"] == "terminating", run
        assert "waiting for volume data to detach" in run["status_message"]
    attachment = attachment_of(api, "data")
    assert (attachment["status"], attachment["force"]) == ("detaching", False)
    job = Job.objects.get(run__name="train")
    assert job.status == "terminating" and job.blocks == 1
    # Never terminated under an attached volume, even when asked to.
    instance = Instance.objects.get(pk=job.instance_id)
    assert api.post(f"{P}/instances/{instance.name}/terminate/").status_code in (202, 409)
    reconcile()
    assert sim_backend.sim_instances.get(instance_id=instance.provider_instance_id).state == "running"
    stop(api, "train", abort=True)
    reconcile()
    run = run_of(api, "train")
    assert (run["status"], run["termination_reason"]) == ("terminated", "aborted_by_user"), run
    attachment = attachment_of(api, "data")
    assert (attachment["status"], attachment["force"]) == ("detached", True)
    assert Job.objects.get(run__name="train").status == "aborted"
    kinds = set(Event.objects.filter(resource_name="data").values_list("kind", flat=True))
    assert {"detach_requested", "force_detach", "detached"} <= kinds


def test_abort_of_a_running_run_forces_the_detach_at_once(fleet, api, apply, reconcile):
    volume(apply, "data")
    reconcile()
    running_with(api, apply, reconcile)
    stop(api, "train", abort=True)
    reconcile()
    assert run_of(api, "train")["status"] == "terminated"
    assert attachment_of(api, "data")["force"] is True


def test_stop_duration_forces_the_detach_and_records_it(fleet, api, apply, reconcile, monkeypatch):
    volume(apply, "data")
    reconcile()
    running_with(api, apply, reconcile, extra="stop_duration: 3s\n")
    fault(api, kind="stuck_detach", volume="data", forced_ok=True)
    stop(api, "train")
    reconcile()
    assert run_of(api, "train")["status"] == "terminating"
    assert attachment_of(api, "data")["force"] is False
    import datetime

    from django.utils import timezone
    later = timezone.now() + datetime.timedelta(seconds=4)
    monkeypatch.setattr(timezone, "now", lambda: later)
    reconcile()
    run = run_of(api, "train")
    assert (run["status"], run["termination_reason"]) == ("terminated", "stopped_by_user"), run
    assert attachment_of(api, "data")["force"] is True
    assert Event.objects.filter(resource_type="run", resource_name="train", kind="stop_duration_exceeded").exists()
    assert Event.objects.filter(resource_type="volume", resource_name="data", kind="stop_duration_exceeded").exists()


def test_max_stop_duration_is_an_alias_and_off_never_forces(fleet, api, apply, reconcile, monkeypatch):
    volume(apply, "data")
    reconcile()
    running_with(api, apply, reconcile, extra="max_stop_duration: off\n")
    fault(api, kind="stuck_detach", volume="data", forced_ok=True)
    stop(api, "train")
    import datetime

    from django.utils import timezone
    later = timezone.now() + datetime.timedelta(days=2)
    monkeypatch.setattr(timezone, "now", lambda: later)
    reconcile()
    assert run_of(api, "train")["status"] == "terminating"
    assert attachment_of(api, "data")["force"] is False


def test_a_forced_detach_that_fails_is_never_taken_for_detached(fleet, api, apply, reconcile, sim_backend):
    volume(apply, "data")
    reconcile()
    running_with(api, apply, reconcile)
    fault(api, kind="stuck_detach", volume="data", forced_ok=False)
    stop(api, "train", abort=True)
    for _ in range(3):
        VolumeAttachment.objects.update(lease_until=None)  # no backoff wait between rounds
        reconcile()
    run = run_of(api, "train")
    assert run["status"] == "terminating", run
    assert "forced detach of volume" in run["status_message"] and "failed" in run["status_message"], run
    attachment = attachment_of(api, "data")
    assert attachment["status"] == "detaching" and attachment["force"] is True
    assert "stuck_detach" in attachment["error"]
    assert sim_backend.sim_volumes.get().attached_instance_id != ""
    assert Event.objects.filter(resource_name="data", kind="detach_error").exists()
    job = Job.objects.get(run__name="train")
    assert job.status == "terminating" and Instance.objects.get(pk=job.instance_id).busy_blocks == 1
    # The provider recovers: the retry completes it.
    assert api.delete(f"{P}/backends/sim/faults/").status_code in (200, 204)
    VolumeAttachment.objects.update(lease_until=None)
    reconcile()
    assert run_of(api, "train")["status"] == "terminated"
    assert attachment_of(api, "data")["status"] == "detached"


def test_a_slow_detach_completes_after_its_polls(fleet, api, apply, reconcile):
    volume(apply, "data")
    reconcile()
    running_with(api, apply, reconcile)
    fault(api, kind="slow_detach", volume="data", polls=3)
    stop(api, "train")
    reconcile(rounds=2)
    assert run_of(api, "train")["status"] == "terminating"
    for _ in range(4):
        VolumeAttachment.objects.update(lease_until=None)
        reconcile(rounds=1)
    assert run_of(api, "train")["status"] == "terminated"
    assert attachment_of(api, "data")["force"] is False


def test_a_stuck_attach_fails_the_job_after_the_timeout_and_frees_everything(fleet, api, apply, reconcile, settings,
                                                                            sim_backend):
    volume(apply, "data")
    reconcile()
    fault(api, kind="stuck_attach", volume="data")
    task(apply, "train", "[data:/data]")
    reconcile()
    job = Job.objects.get(run__name="train")
    assert job.status == "provisioning" and not sim_backend.sim_jobs.exists()  # never started without its volume
    assert attachment_of(api, "data")["status"] == "attaching"
    settings.ATTACH_TIMEOUT = 0
    VolumeAttachment.objects.update(lease_until=None)
    reconcile()
    run = run_of(api, "train")
    assert (run["status"], run["termination_reason"]) == ("failed", "volume_error"), run
    assert "data" in run["status_message"]
    job.refresh_from_db()
    assert (job.status, job.termination_reason) == ("failed", "volume_error")
    assert Instance.objects.get(pk=job.instance_id).busy_blocks == 0
    assert attachment_of(api, "data")["status"] == "detached"
    assert not sim_backend.sim_jobs.exists()


def test_a_volume_in_another_zone_fails_the_attach_and_the_job(fleet, api, apply, reconcile, sim_backend):
    """An attach the provider refuses fails the job with volume_error, and its blocks come back."""
    volume(apply, "data", zone="eu-west-1b")
    reconcile()
    task(apply, "train", "[data:/data]")
    reconcile()
    job = Job.objects.get(run__name="train")
    instance = Instance.objects.get(pk=job.instance_id)
    assert instance.availability_zone == "eu-west-1b"  # placement went where the volume is


def test_api_errors_through_a_whole_attach_and_stop_cycle_lose_nothing(fleet, api, apply, reconcile, sim_backend):
    for n in range(4):
        volume(apply, f"data{n}")
    reconcile()
    fault(api, kind="api_errors", rate=0.3)
    for n in range(4):
        task(apply, f"train{n}", f"[data{n}:/data]")

    def drive(until):
        for _ in range(60):
            for model in (Job, VolumeAttachment, Instance):
                model.objects.update(lease_until=None)
            reconcile(rounds=1)
            if until():
                return
        raise AssertionError("did not settle")

    from volumes.models import Volume
    Volume.objects.update(lease_until=None)
    drive(lambda: all(run_of(api, f"train{n}")["status"] == "running" for n in range(4)))
    assert VolumeAttachment.objects.filter(status="attached").count() == 4
    for n in range(4):
        stop(api, f"train{n}")
    drive(lambda: all(run_of(api, f"train{n}")["status"] == "terminated" for n in range(4)))
    assert set(VolumeAttachment.objects.values_list("status", flat=True)) == {"detached"}
    assert not VolumeAttachment.objects.filter(force=True).exists()
    assert not sim_backend.sim_volumes.exclude(attached_instance_id="").exists()
    assert set(Instance.objects.exclude(status="terminated").values_list("busy_blocks", flat=True)) == {0}
    assert sim_backend.sim_jobs.count() == 4  # one workload per job, none doubled by a retry


def test_an_instance_lost_under_a_job_detaches_its_volume(fleet, api, apply, reconcile, sim_backend):
    volume(apply, "data")
    reconcile()
    running_with(api, apply, reconcile)
    job = Job.objects.get(run__name="train")
    fault(api, kind="interrupt_instance", instance=job.instance.name)
    reconcile()
    job.refresh_from_db()
    assert job.status == "failed"
    assert attachment_of(api, "data")["status"] == "detached"
    assert run_of(api, "train")["status"] == "failed"


# --- where the job lands ------------------------------------------------------------------------------


def test_multi_region_candidates_land_where_there_is_capacity(fleet, api, apply, reconcile, sim_backend):
    volume(apply, "vol-eu", "eu-west-1")
    volume(apply, "vol-us", "us-east-1")
    reconcile()
    fault(api, kind="no_capacity", region="eu-west-1")
    task(apply, "train", "[{name: [vol-eu, vol-us], path: /data}]")
    reconcile()
    run = run_of(api, "train")
    assert run["status"] == "running", run
    job = Job.objects.get(run__name="train", status="running")
    assert job.instance.region == "us-east-1"
    assert job.volumes == [{"name": "vol-us", "path": "/data"}]
    assert attachment_of(api, "vol-us")["status"] == "attached"
    # It was tried first (the cheaper place), then let go when eu-west-1 had no capacity.
    assert {a["status"] for a in api.get(f"{P}/volumes/vol-eu/").json()["attachments"]} <= {"detached"}


def test_the_first_listed_candidate_that_matches_is_attached(fleet, api, apply, reconcile):
    volume(apply, "vol-eu", "eu-west-1")
    volume(apply, "vol-us", "us-east-1")
    reconcile()
    task(apply, "train", "[{name: [vol-us, vol-eu], path: /data}]", extra="regions: [eu-west-1]\n")
    reconcile()
    assert Job.objects.get(run__name="train").volumes == [{"name": "vol-eu", "path": "/data"}]


def test_two_mount_points_that_fit_only_in_one_zone(fleet, api, apply, reconcile):
    volume(apply, "a-zone-a", zone="eu-west-1a")
    volume(apply, "a-zone-b", zone="eu-west-1b")
    volume(apply, "b-zone-b", zone="eu-west-1b")
    reconcile()
    task(apply, "train", "[{name: [a-zone-a, a-zone-b], path: /a}, {name: b-zone-b, path: /b}]")
    reconcile()
    job = Job.objects.get(run__name="train")
    assert run_of(api, "train")["status"] == "running"
    assert job.instance.availability_zone == "eu-west-1b"
    assert job.volumes == [{"name": "a-zone-b", "path": "/a"}, {"name": "b-zone-b", "path": "/b"}]


def test_when_no_place_fits_the_message_names_every_mount_point_and_candidate(fleet, api, apply, reconcile):
    volume(apply, "vol-eu", "eu-west-1")
    volume(apply, "vol-us", "us-east-1")
    volume(apply, "busy", "us-east-1")
    reconcile()
    running_with(api, apply, reconcile, name="holder", mounts="[busy:/x]")
    task(apply, "train", "[{name: vol-eu, path: /data}, {name: [busy, vol-us], path: /models}]")
    reconcile()
    run = run_of(api, "train")
    assert (run["status"], run["termination_reason"]) == ("failed", "volume_error"), run
    message = run["status_message"]
    assert "/data: vol-eu (sim, eu-west-1a): wrong region (/models has no usable volume in eu-west-1)" in message
    assert "/models: busy (sim, us-east-1a): attached elsewhere" in message
    assert "vol-us (sim, us-east-1a): wrong region (/data has no usable volume in us-east-1)" in message


def test_a_candidate_not_active_and_no_capacity_there_are_named(fleet, api, apply, reconcile):
    volume(apply, "vol-eu", "eu-west-1")
    volume(apply, "vol-new", "us-east-1")
    reconcile()
    from volumes.models import Volume
    Volume.objects.filter(name="vol-new").update(status="failed", status_message="quota exceeded")
    fault(api, kind="no_capacity", region="eu-west-1")
    task(apply, "train", "[{name: [vol-new, vol-eu], path: /data}]")
    reconcile()
    run = run_of(api, "train")
    assert (run["status"], run["termination_reason"]) == ("failed", "no_capacity"), run
    assert "vol-new (sim, us-east-1a): not active (failed: quota exceeded)" in run["status_message"]
    assert "vol-eu (sim, eu-west-1a): no capacity there" in run["status_message"]


def test_zone_no_capacity_moves_to_the_other_zone(fleet, api, apply, reconcile):
    fault(api, kind="no_capacity", region="eu-west-1", availability_zone="eu-west-1a")
    task(apply, "train", "[]", extra="regions: [eu-west-1]\n")
    reconcile()
    job = Job.objects.get(run__name="train", status="running")
    assert job.instance.availability_zone == "eu-west-1b"


def test_force_detach_endpoint_detaches_a_volume_under_a_running_job(fleet, api, apply, reconcile, sim_backend):
    volume(apply, "data")
    reconcile()
    running_with(api, apply, reconcile)
    fault(api, kind="stuck_detach", volume="data", forced_ok=True)
    response = api.post(f"{P}/volumes/data/force-detach/")
    assert response.status_code == 202 and response.json()["force"] is True
    reconcile()
    assert attachment_of(api, "data")["status"] == "detached"
    assert sim_backend.sim_volumes.get().attached_instance_id == ""
    assert Event.objects.filter(resource_name="data", kind="force_detach").exists()


def test_a_failed_volume_create_is_visible_and_the_run_is_told(fleet, api, apply, reconcile):
    fault(api, kind="fail_volume_create", volume="data")
    volume(apply, "data")
    reconcile()
    body = api.get(f"{P}/volumes/data/").json()
    assert body["status"] == "failed" and "fail_volume_create" in body["status_message"]
    task(apply, "train", "[data:/data]")
    reconcile()
    run = run_of(api, "train")
    assert (run["status"], run["termination_reason"]) == ("failed", "volume_error")
    assert "data (sim, eu-west-1): not active (failed" in run["status_message"]


def test_instance_volumes_reach_the_workload_with_no_attach(fleet, api, apply, reconcile, sim_backend):
    volume(apply, "data")
    reconcile()
    running_with(api, apply, reconcile, mounts="['/mnt/cache:/cache', data:/data, "
                                               "{instance_path: /mnt/models, path: /models, optional: true}]")
    job = Job.objects.get(run__name="train")
    assert job.volumes == [{"instance_path": "/mnt/cache", "path": "/cache"}, {"name": "data", "path": "/data"},
                           {"instance_path": "/mnt/models", "path": "/models"}]
    mounts = sim_backend.sim_jobs.get().mounts
    assert mounts[0] == {"path": "/cache", "instance_path": "/mnt/cache"}
    assert mounts[1]["path"] == "/data" and mounts[1]["device_name"] == "/dev/sdf"
    assert mounts[2] == {"path": "/models", "instance_path": "/mnt/models"}
    assert VolumeAttachment.objects.count() == 1  # only the network volume was attached


def test_registering_a_volume_looks_for_it_in_its_region(sim_backend, api, apply, reconcile):
    volume(apply, "made-in-us", "us-east-1")
    reconcile()
    volume_id = api.get(f"{P}/volumes/made-in-us/").json()["volume_id"]
    apply(f"type: volume\nname: wrong\nbackend: sim\nregion: eu-west-1\nvolume_id: {volume_id}\n")
    apply(f"type: volume\nname: right\nbackend: sim\nregion: us-east-1\nvolume_id: {volume_id}\n")
    reconcile()
    wrong = api.get(f"{P}/volumes/wrong/").json()
    assert wrong["status"] == "failed" and "not found" in wrong["status_message"]
    right = api.get(f"{P}/volumes/right/").json()
    assert (right["status"], right["external"], right["availability_zone"]) == ("active", True, "us-east-1a")


def test_only_an_attachment_that_may_be_attached_holds_its_instance(project, sim_backend):
    from django.utils import timezone

    from fleets.holders import held
    from tests import factories

    fleet = factories.FleetFactory(project=project)
    cases = {"attaching": None, "attached": timezone.now(), "detaching": None, "detached": timezone.now(),
             "failed": None, "failed-after-attach": timezone.now()}
    instances = {}
    for n, (case, attached_at) in enumerate(cases.items()):
        instances[case] = factories.InstanceFactory(fleet=fleet, backend=sim_backend, instance_num=n)
        factories.VolumeFactory(project=project, backend=sim_backend).attachments.create(
            instance=instances[case], status=case.split("-")[0], attached_at=attached_at)
    holding = set(Instance.objects.filter(held()).values_list("name", flat=True))
    assert holding == {instances[c].name for c in ("attaching", "attached", "detaching", "failed-after-attach")}


def test_a_detach_forced_during_a_poll_is_not_left_resting(fleet, api, apply, reconcile, monkeypatch):
    from backends.drivers.sim_volumes import SimVolumes
    from volumes.attachments import detach_volumes

    volume(apply, "data")
    reconcile()
    running_with(api, apply, reconcile)
    fault(api, kind="stuck_detach", volume="data", forced_ok=True)
    stop(api, "train")
    reconcile()
    original = SimVolumes.is_volume_detached

    def abort_meanwhile(self, **kwargs):  # the user aborts while this pass polls the unforced detach
        VolumeAttachment.objects.update(force=True)
        return original(self, **kwargs)

    monkeypatch.setattr(SimVolumes, "is_volume_detached", abort_meanwhile)
    VolumeAttachment.objects.update(lease_until=None)
    detach_volumes()
    attachment = VolumeAttachment.objects.get()
    assert attachment.status == "detaching" and attachment.lease_until is None  # due again at once
    monkeypatch.undo()
    detach_volumes()
    assert VolumeAttachment.objects.get().status == "detached"
