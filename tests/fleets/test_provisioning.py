"""Fleet provisioning through the sim driver: min..max, idle retirement, faults, deletion."""

from datetime import timedelta

import pytest
from django.utils import timezone

from fleets.models import Fleet, Instance
from runs.models import Run

pytestmark = pytest.mark.django_db

FAULTS = "/api/v1/projects/main/backends/sim/faults/"


def _statuses(fleet: str) -> list[tuple[str, str]]:
    return list(Instance.objects.filter(fleet__name=fleet).order_by("instance_num").values_list("name", "status"))


def test_nodes_n_creates_n_instances_that_come_up(sim_backend, apply, reconcile):
    apply("type: fleet\nname: trio\nnodes: 3\nresources: {gpu: L4:1}\n")
    reconcile()
    assert _statuses("trio") == [("trio-0", "idle"), ("trio-1", "idle"), ("trio-2", "idle")]
    assert Fleet.objects.get().status == "active"
    assert sim_backend.sim_instances.count() == 3


def test_elastic_fleet_grows_on_demand_up_to_max(sim_backend, api, apply, reconcile):
    apply("type: fleet\nname: elastic\nnodes: 0..2\nresources: {gpu: 24GB..80GB}\nblocks: 1\n")
    reconcile()
    assert _statuses("elastic") == [] and Fleet.objects.get().status == "active"
    for name in ("a1", "a2", "a3"):
        apply(f"type: task\nname: {name}\ncommands: ['sleep 1000']\nresources: {{gpu: 1}}\nfleets: [elastic]\n")
    reconcile()
    assert _statuses("elastic") == [("elastic-0", "busy"), ("elastic-1", "busy")]
    statuses = dict(Run.objects.values_list("name", "status"))
    assert sorted(statuses.values()) == ["failed", "running", "running"]
    failed = Run.objects.get(status="failed")
    assert "at its maximum of 2" in failed.status_message


def test_idle_instances_above_min_are_retired_after_idle_duration(sim_backend, api, apply, reconcile):
    apply("type: fleet\nname: elastic\nnodes: 1..3\nresources: {gpu: L4:1}\nidle_duration: 10m\n")
    reconcile()
    for name in ("j1", "j2"):
        apply(f"type: task\nname: {name}\ncommands: [serve]\nresources: {{gpu: 1}}\n")
    reconcile()
    assert len(_statuses("elastic")) == 2
    for name in ("j1", "j2"):
        api.post(f"/api/v1/projects/main/runs/{name}/stop/", {}, format="json")
    reconcile()
    assert [s for _, s in _statuses("elastic")] == ["idle", "idle"]
    Instance.objects.update(idle_since=timezone.now() - timedelta(minutes=11))
    reconcile()
    assert sorted(s for _, s in _statuses("elastic")) == ["idle", "terminated"]  # min 1 is kept
    assert Instance.objects.get(status="terminated").termination_reason == "idle_timeout"


def test_interrupted_instance_fails_its_jobs_and_releases_blocks(sim_backend, api, apply, reconcile):
    apply("type: fleet\nname: gpu8\nnodes: 1\nresources: {gpu: H100:8}\nblocks: 8\n")
    reconcile()
    apply("type: task\nname: train\ncommands: [train]\nresources: {gpu: 2}\n")
    reconcile()
    api.post(FAULTS, {"kind": "interrupt_instance", "instance": "gpu8-0"}, format="json")
    reconcile()
    instance = Instance.objects.get(name="gpu8-0")
    assert (instance.status, instance.termination_reason, instance.busy_blocks) == ("terminated", "interrupted", 0)
    job = Run.objects.get(name="train").jobs.get()
    assert (job.status, job.termination_reason) == ("failed", "interrupted")
    assert Run.objects.get(name="train").status == "failed"
    assert _statuses("gpu8")[-1] == ("gpu8-1", "idle")  # the fleet is brought back to nodes.min


def test_no_capacity_moves_to_another_region(sim_backend, api, apply, reconcile):
    api.post(FAULTS, {"kind": "no_capacity", "region": "eu-west-1"}, format="json")
    apply("type: fleet\nname: any\nnodes: 1\nresources: {gpu: L4:1}\n")
    reconcile()
    instances = list(Instance.objects.order_by("pk").values_list("region", "status", "termination_reason"))
    assert ("us-east-1", "idle", "") in instances
    first = Instance.objects.order_by("pk").first()
    if first.region == "eu-west-1":
        assert (first.status, first.termination_reason) == ("terminated", "no_capacity")
        assert "no capacity" in first.status_message


def test_provider_errors_are_retried_with_backoff_and_visible(sim_backend, api, apply, reconcile):
    from fleets.instances import process_instances
    from fleets.provisioning import reconcile_fleets

    apply("type: fleet\nname: flaky\nnodes: 1\nresources: {gpu: L4:1}\n")
    reconcile_fleets()
    api.post(FAULTS, {"kind": "api_errors", "rate": 1}, format="json")
    process_instances()
    instance = Instance.objects.get()
    assert instance.status == "pending" and "provider error, retrying" in instance.status_message
    assert instance.lease_until is not None and instance.lease_until > timezone.now()  # backing off
    api.delete(FAULTS)
    reconcile()
    assert Instance.objects.get().status == "idle"


def test_offers_failing_is_visible_on_the_fleet(sim_backend, api, apply, reconcile):
    api.post(FAULTS, {"kind": "api_errors", "rate": 1}, format="json")
    apply("type: fleet\nname: flaky\nnodes: 1\nresources: {gpu: L4:1}\n")
    reconcile()
    fleet = Fleet.objects.get()
    assert fleet.status == "submitted" and "simulated provider API error" in fleet.status_message
    api.delete(FAULTS)
    reconcile()
    assert Fleet.objects.get().status == "active"


def test_deleting_a_fleet_stops_its_jobs_then_terminates_instances(sim_backend, api, apply, reconcile):
    apply("type: fleet\nname: gpu8\nnodes: 1\nresources: {gpu: H100:8}\nblocks: 8\n")
    reconcile()
    apply("type: task\nname: train\ncommands: [train]\nresources: {gpu: 1}\n")
    reconcile()
    assert api.delete("/api/v1/projects/main/fleets/gpu8/").json()["status"] == "terminating"
    reconcile()
    assert Fleet.objects.get().status == "terminated"
    instance = Instance.objects.get()
    assert (instance.status, instance.busy_blocks) == ("terminated", 0)
    assert sim_backend.sim_instances.get().state == "terminated"
    job = Run.objects.get(name="train").jobs.get()
    assert (job.status, job.termination_reason) == ("terminated", "stopped_by_server")
    assert Run.objects.get(name="train").status == "failed"


def test_no_capacity_everywhere_backs_off_instead_of_churning(sim_backend, api, apply, reconcile):
    for region in ("eu-west-1", "us-east-1"):
        api.post(FAULTS, {"kind": "no_capacity", "region": region}, format="json")
    apply("type: fleet\nname: any\nnodes: 1\nresources: {gpu: L4:1}\n")
    reconcile(rounds=5)
    # One attempt per zone (two regions of two zones), then a pause (not one doomed instance per tick).
    assert Instance.objects.count() == 4
    assert Instance.objects.filter(termination_reason="no_capacity").count() == 4
    assert ("no capacity in eu-west-1a, eu-west-1b, us-east-1a, us-east-1b just now"
            in Fleet.objects.get().status_message)
    Instance.objects.update(updated_at=timezone.now() - timedelta(seconds=20))
    api.delete(FAULTS)
    reconcile()
    assert Fleet.objects.get().status == "active"
    assert Instance.objects.filter(status="idle").count() == 1


def test_backends_are_named_by_name_or_by_type(project, api, apply, reconcile):
    from tests import factories

    factories.BackendFactory(project=project, name="lab", type="sim")
    apply("type: fleet\nname: by-type\nnodes: 1\nbackends: [sim]\nresources: {gpu: L4:1}\n")
    apply("type: volume\nname: data\nbackend: sim\nregion: eu-west-1\nsize: 10GB\n")
    reconcile()
    assert Instance.objects.get().backend.name == "lab"
    assert api.get("/api/v1/projects/main/volumes/data/").json()["backend"] == "lab"
    apply("type: task\nname: by-name\ncommands: [x]\nresources: {gpu: 1}\nbackends: [lab]\n")
    reconcile()
    assert Run.objects.get(name="by-name").jobs.get().instance.name == "by-type-0"
    body = apply("type: task\nname: nowhere\ncommands: [x]\nbackends: [aws]\n", expect=400)
    assert "aws" in body["detail"]
