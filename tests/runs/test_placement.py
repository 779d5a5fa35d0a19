"""Placement onto fleets: the seed scenario, block sizes, multi-node, filters, no capacity."""

import pytest

from fleets.models import Instance
from runs.models import Run
from tests import factories

pytestmark = pytest.mark.django_db

GPU8 = "type: fleet\nname: gpu8\nnodes: 1\nbackends: [sim]\nresources:\n  gpu: H100:8\nblocks: 8\n"


def _instance(name: str) -> Instance:
    return Instance.objects.get(name=name)


def _run(api, name: str) -> dict:
    return api.get(f"/api/v1/projects/main/runs/{name}/").json()


def test_seed_scenario_six_of_eight_blocks_then_all_idle(sim_backend, api, apply, reconcile):
    apply(GPU8)
    reconcile()
    assert (_instance("gpu8-0").status, _instance("gpu8-0").total_blocks) == ("idle", 8)
    apply("type: service\nname: llm\ncommands: [serve]\nport: 8000\nreplicas: 6\nresources: {gpu: 1}\n"
          "fleets: [gpu8]\n")
    reconcile()
    body = api.get("/api/v1/projects/main/instances/gpu8-0/").json()
    assert (body["status"], body["busy_blocks"], body["idle_blocks"], body["blocks"]) == ("busy", 6, 2, "6/8 busy")
    run = _run(api, "llm")
    assert (run["status"], run["health"]) == ("running", "healthy")
    assert run["replicas"] == {"desired": 6, "running": 6, "ready": 6}
    jobs = api.get("/api/v1/projects/main/runs/llm/jobs/").json()["results"]
    assert {(j["instance"], j["blocks"], j["status"]) for j in jobs} == {("gpu8-0", 1, "running")}
    assert api.post("/api/v1/projects/main/runs/llm/stop/", {}, format="json").status_code == 202
    reconcile()
    instance = _instance("gpu8-0")
    assert (instance.status, instance.busy_blocks, instance.idle_blocks) == ("idle", 0, 8)
    assert (_run(api, "llm")["status"], _run(api, "llm")["termination_reason"]) == ("terminated", "stopped_by_user")


def test_a_job_takes_the_smallest_share_that_fits(sim_backend, api, apply, reconcile):
    apply(GPU8.replace("blocks: 8", "blocks: 4"))
    apply("type: task\nname: one\ncommands: [x]\nresources: {gpu: 2}\n")
    apply("type: task\nname: three\ncommands: [x]\nresources: {gpu: 3..}\n")
    reconcile()
    blocks = dict(Run.objects.get(name=n).jobs.values_list("run__name", "blocks").get() for n in ("one", "three"))
    assert blocks == {"one": 1, "three": 2}  # 2 GPUs per block: 3 GPUs need 2 blocks
    assert _instance("gpu8-0").busy_blocks == 3


def test_blocks_auto_is_one_per_gpu(sim_backend, api, apply, reconcile):
    apply(GPU8.replace("blocks: 8", "blocks: auto"))
    reconcile()
    assert _instance("gpu8-0").total_blocks == 8
    apply("type: fleet\nname: cpu\nnodes: 1\nresources: {cpu: 16, gpu: 0}\nblocks: auto\n")
    reconcile()
    assert _instance("cpu-0").total_blocks == 16


def test_multi_node_tasks_take_whole_idle_instances(sim_backend, api, apply, reconcile):
    apply(GPU8.replace("nodes: 1", "nodes: 2"))
    reconcile()
    apply("type: task\nname: ddp\nnodes: 2\ncommands: [torchrun]\nresources: {gpu: H100:8}\n")
    reconcile()
    jobs = list(Run.objects.get(name="ddp").jobs.values_list("instance__name", "blocks", "status"))
    assert sorted(jobs) == [("gpu8-0", 8, "running"), ("gpu8-1", 8, "running")]
    assert _run(api, "ddp")["status"] == "running"


def test_multi_node_task_does_not_take_a_partly_busy_instance(sim_backend, api, apply, reconcile):
    apply(GPU8.replace("nodes: 1", "nodes: 2"))
    reconcile()
    apply("type: task\nname: small\ncommands: [x]\nresources: {gpu: 1}\n")
    reconcile()
    apply("type: task\nname: ddp\nnodes: 2\ncommands: [torchrun]\nresources: {gpu: 8}\n")
    reconcile()
    run = _run(api, "ddp")
    assert (run["status"], run["termination_reason"]) == ("failed", "no_capacity")
    assert "blocks busy" in run["status_message"]
    assert _instance("gpu8-0").busy_blocks + _instance("gpu8-1").busy_blocks == 1


def test_no_capacity_without_retry_fails_saying_why(sim_backend, api, apply, reconcile):
    apply(GPU8)
    reconcile()
    apply("type: task\nname: big\ncommands: [x]\nresources: {gpu: A100:2}\nfleets: [gpu8]\n")
    reconcile()
    run = _run(api, "big")
    assert (run["status"], run["termination_reason"]) == ("failed", "no_capacity")
    assert "gpu8-0: GPU H100 is not one of A100" in run["status_message"]
    assert "at its maximum of 1" in run["status_message"]


def test_no_capacity_with_retry_waits_pending_then_places(sim_backend, api, apply, reconcile):
    apply(GPU8)
    reconcile()
    apply("type: task\nname: first\ncommands: [x]\nresources: {gpu: 8}\n")
    apply("type: task\nname: second\ncommands: ['sleep 1000']\nresources: {gpu: 8}\n"
          "retry: {on_events: [no-capacity], duration: 1h}\n")
    reconcile()
    second = _run(api, "second")
    assert second["status"] == "pending" and "0/8 idle" in second["status_message"]
    api.post("/api/v1/projects/main/runs/first/stop/", {}, format="json")
    reconcile()
    assert _run(api, "second")["status"] == "running"


def test_filters_fleets_regions_and_spot_policy(sim_backend, api, apply, reconcile):
    apply("type: fleet\nname: eu\nnodes: 1\nregions: [eu-west-1]\nresources: {gpu: L4:1}\n")
    apply("type: fleet\nname: us\nnodes: 1\nregions: [us-east-1]\nresources: {gpu: L4:1}\n")
    reconcile()
    assert (_instance("eu-0").region, _instance("us-0").region) == ("eu-west-1", "us-east-1")
    apply("type: task\nname: in-us\ncommands: [x]\nresources: {gpu: 1}\nregions: [us-east-1]\n")
    apply("type: task\nname: in-eu\ncommands: [x]\nresources: {gpu: 1}\nfleets: [eu]\n")
    apply("type: task\nname: spot\ncommands: [x]\nresources: {gpu: 1}\nspot_policy: spot\n")
    reconcile()
    placed = dict(Run.objects.values_list("name", "jobs__instance__name"))
    assert placed == {"in-us": "us-0", "in-eu": "eu-0", "spot": None}
    assert _run(api, "spot")["termination_reason"] == "no_capacity"


def test_task_is_done_when_all_jobs_are_done_and_exit_codes_fail_it(sim_backend, api, apply, reconcile):
    apply(GPU8)
    reconcile()
    apply("type: task\nname: ok\nnodes: 1\ncommands: ['sleep 0']\nresources: {gpu: 1}\n")
    apply("type: task\nname: bad\ncommands: ['exit 3']\nresources: {gpu: 1}\n")
    reconcile()
    ok, bad = _run(api, "ok"), _run(api, "bad")
    assert (ok["status"], ok["termination_reason"]) == ("done", "all_jobs_done")
    assert (bad["status"], bad["termination_reason"]) == ("failed", "job_failed")
    job = api.get("/api/v1/projects/main/runs/bad/jobs/").json()["results"][0]
    assert (job["status"], job["exit_status"], job["termination_reason"]) == ("failed", 3, "exited_with_error")
    assert _instance("gpu8-0").busy_blocks == 0


def test_crash_job_fault_fails_the_job(sim_backend, api, apply, reconcile):
    apply(GPU8)
    reconcile()
    apply("type: task\nname: crashy\ncommands: [train]\nresources: {gpu: 1}\n")
    reconcile()
    api.post("/api/v1/projects/main/backends/sim/faults/",
             {"kind": "crash_job", "job": "crashy-0-0", "exit_status": 137}, format="json")
    reconcile()
    job = api.get("/api/v1/projects/main/runs/crashy/jobs/").json()["results"][0]
    assert (job["status"], job["exit_status"]) == ("failed", 137)
    assert _instance("gpu8-0").busy_blocks == 0


def test_instances_of_another_project_are_never_used(sim_backend, api, apply, reconcile):
    other = factories.ProjectFactory(name="other")
    fleet = factories.FleetFactory(project=other, name="theirs")
    factories.InstanceFactory(fleet=fleet, backend=factories.BackendFactory(project=other), status="idle",
                              resources={"cpus": 8, "memory_mib": 65536, "gpus": [], "disk_gb": 100})
    apply("type: task\nname: mine\ncommands: [x]\n")
    reconcile()
    assert _run(api, "mine")["termination_reason"] == "no_capacity"


def test_a_multi_node_replica_split_by_a_claim_waits_for_all_its_nodes(sim_backend, api, apply, reconcile):
    from runs.placement import place_jobs

    apply(GPU8.replace("nodes: 1", "nodes: 2"))
    reconcile()
    apply("type: task\nname: ddp\nnodes: 2\ncommands: [torchrun]\nresources: {gpu: 8}\n")
    assert place_jobs(limit=1) == 0  # only node 0 was claimed: nothing is placed alone
    assert not Run.objects.get(name="ddp").jobs.exclude(instance=None).exists()
    assert place_jobs() == 2
