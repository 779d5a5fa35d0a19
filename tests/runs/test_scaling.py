"""Re-applying an active service: scaling starts or stops only the difference; a changed job spec is
rolled out one replica at a time, never with fewer replicas ready than before."""

import pytest

from backends.models import SimJob
from core.models import Event
from runs.models import Job, Run
from runs.placement import place_jobs
from runs.rollout import roll_out
from runs.workloads import process_jobs

pytestmark = pytest.mark.django_db

GPU8 = "type: fleet\nname: gpu8\nnodes: 2\nbackends: [sim]\nresources:\n  gpu: H100:8\nblocks: 8\n"
APPLY = "/api/v1/projects/main/apply/"


def service(replicas: int, commands: str = "[serve]", extra: str = "") -> str:
    return (f"type: service\nname: llm\ncommands: {commands}\nport: 8000\nreplicas: {replicas}\n"
            f"resources: {{gpu: 1}}\nfleets: [gpu8]\n{extra}")


def _running_service(apply, reconcile, replicas: int = 3, extra: str = "") -> Run:
    apply(GPU8)
    reconcile()
    apply(service(replicas, extra=extra))
    run = Run.objects.get(name="llm")
    for _ in range(10):  # probes pass once per poll: a quiet round may still be counting them
        reconcile()
        if _ready(run) == replicas:
            break
    run.refresh_from_db()
    assert (run.status, run.jobs.filter(status="running", ready=True).count()) == ("running", replicas)
    return run


def _events(kind: str) -> list[str]:
    return list(Event.objects.filter(resource_type="run", resource_name="llm", kind=kind).order_by("pk")
                .values_list("message", flat=True))


def _ready(run: Run) -> int:
    return run.jobs.filter(status="running", ready=True).count()


def _old_live(run: Run) -> int:
    run.refresh_from_db()
    return run.jobs.filter(status__in=("submitted", "provisioning", "running"),
                           spec_version__lt=run.spec_version).count()


def test_scaling_up_adds_replicas_and_leaves_the_others_untouched(sim_backend, api, apply, reconcile):
    run = _running_service(apply, reconcile)
    before = {job.replica_num: (job.pk, job.submission_num, job.started_at) for job in run.jobs.all()}
    body = apply(service(5))
    assert (body["action"], list(body["changes"]), body["plan"]) == (
        "update", ["replicas"], {"start": [3, 4], "stop": [], "replace": []})
    reconcile()
    jobs = {job.replica_num: job for job in run.jobs.all()}
    assert sorted(jobs) == [0, 1, 2, 3, 4]
    assert {n: (jobs[n].pk, jobs[n].submission_num, jobs[n].started_at) for n in range(3)} == before
    assert {job.status for job in jobs.values()} == {"running"}
    body = api.get("/api/v1/projects/main/runs/llm/").json()
    assert (body["status"], body["health"]) == ("running", "healthy")
    assert (body["replicas"]["desired"], body["replicas"]["running"]) == (5, 5)
    assert _events("scaled") == ["from 3 to 5 replicas"]


def test_scaling_down_stops_the_highest_replicas_and_stays_healthy(sim_backend, api, apply, reconcile):
    run = _running_service(apply, reconcile, replicas=5)
    body = apply(service(2))
    assert body["plan"] == {"start": [], "stop": [4, 3, 2], "replace": []}
    reconcile()
    stopped = {job.replica_num: (job.status, job.termination_reason) for job in run.jobs.filter(replica_num__gte=2)}
    assert stopped == {n: ("terminated", "scaled_down") for n in (2, 3, 4)}
    assert set(run.jobs.filter(replica_num__lt=2).values_list("status", flat=True)) == {"running"}
    run.refresh_from_db()
    assert (run.status, run.health) == ("running", "healthy")
    body = api.get("/api/v1/projects/main/runs/llm/").json()
    assert (body["status"], body["health"]) == ("running", "healthy")
    assert (body["replicas"]["desired"], body["replicas"]["running"]) == (2, 2)
    assert _events("scaled") == ["from 5 to 2 replicas"]
    # Scaling up again takes new numbers: a replica's history stays its own.
    assert apply(service(3))["plan"]["start"] == [5]


@pytest.mark.parametrize("extra", ["", "probes: [{type: http, url: /health, ready_after: 3}]\n"],
                         ids=["no-probes", "probes"])
def test_a_changed_job_spec_replaces_replicas_one_at_a_time(sim_backend, apply, reconcile, extra):
    run = _running_service(apply, reconcile, extra=extra)
    body = apply(service(3, commands="[serve --v2]", extra=extra))
    assert (body["action"], list(body["changes"]), body["plan"]) == (
        "update", ["commands"], {"start": [], "stop": [], "replace": [0, 1, 2]})
    assert _events("update_started") == ["version 1: commands changed; replacing replicas [0, 1, 2] one at a time"]
    most_live = 0
    for _ in range(40):
        if not _old_live(run):
            break
        for step in (roll_out, place_jobs, process_jobs):
            Job.objects.update(lease_until=None, lease_owner="")
            step()
            run.refresh_from_db()
            assert (run.status, _ready(run) >= 3) == ("running", True), step.__name__
            most_live = max(most_live, run.jobs.filter(status__in=("submitted", "provisioning", "running")).count())
    assert _old_live(run) == 0
    reconcile()
    run.refresh_from_db()
    assert (run.status, run.health, run.spec_version, most_live) == ("running", "healthy", 1, 4)
    workloads = SimJob.objects.filter(state="running")
    assert sorted(w.commands for w in workloads) == [["serve --v2"]] * 3
    live = run.jobs.exclude(termination_reason="scaled_down")
    assert sorted(live.values_list("replica_num", "spec_version", "status")) == [(n, 1, "running") for n in (3, 4, 5)]
    assert set(run.jobs.filter(replica_num__lt=3).values_list("status", "termination_reason")) == {
        ("terminated", "scaled_down")}
    assert _events("replica_replaced") == ["replica 2 replaced by replica 3", "replica 1 replaced by replica 4",
                                           "replica 0 replaced by replica 5"]
    assert _events("update_done") == ["every replica runs version 1"]


def test_one_replacement_at_a_time_however_many_passes(sim_backend, apply, reconcile):
    run = _running_service(apply, reconcile)
    apply(service(3, commands="[serve --v2]"))
    assert (roll_out(), roll_out(), roll_out()) == (1, 0, 0)  # the replacement is not ready yet
    assert list(run.jobs.filter(spec_version=1).values_list("replica_num", "status")) == [(3, "submitted")]
    assert _ready(run) == 3


def test_scaling_and_a_new_spec_at_once(sim_backend, apply, reconcile):
    run = _running_service(apply, reconcile)
    body = apply(service(2, commands="[serve --v2]"))
    assert (sorted(body["changes"]), body["plan"]) == (
        ["commands", "replicas"], {"start": [], "stop": [2], "replace": [0, 1]})
    reconcile(rounds=30)
    run.refresh_from_db()
    assert (run.status, run.health) == ("running", "healthy")
    assert sorted(w.commands for w in SimJob.objects.filter(state="running")) == [["serve --v2"]] * 2
    body = apply(service(4, commands="[serve --v3]"))
    assert body["plan"] == {"start": [5, 6], "stop": [], "replace": [3, 4]}
    reconcile(rounds=30)
    run.refresh_from_db()
    assert (run.status, run.health, run.spec_version) == ("running", "healthy", 2)
    assert sorted(w.commands for w in SimJob.objects.filter(state="running")) == [["serve --v3"]] * 4


def test_dry_run_shows_the_plan_and_changes_nothing(sim_backend, api, apply, reconcile):
    run = _running_service(apply, reconcile)
    jobs = list(run.jobs.values_list("pk", "status", "spec_version"))
    response = api.post(APPLY + "?dry_run=true", data=service(4, commands="[serve --v2]"),
                        content_type="application/yaml")
    assert response.status_code == 200
    body = response.json()
    assert (body["action"], body["dry_run"], body["resource"]) == ("update", True, None)
    assert body["changes"] == {"commands": {"old": ["serve"], "new": ["serve --v2"]},
                               "replicas": {"old": 3, "new": 4}}
    assert body["plan"] == {"start": [3], "stop": [], "replace": [0, 1, 2]}
    reconcile()
    run.refresh_from_db()
    assert (run.spec["replicas"], run.spec["commands"], run.spec_version) == (3, ["serve"], 0)
    assert list(run.jobs.values_list("pk", "status", "spec_version")) == jobs
    assert not _events("update_started") and not _events("scaled")


def test_unchanged_and_in_place_changes_replace_nothing(sim_backend, apply, reconcile):
    run = _running_service(apply, reconcile)
    assert apply(service(3), expect=200)["action"] == "unchanged"
    body = apply(service(3, extra="retry: true\nstop_duration: 5m\n"))
    assert (body["action"], sorted(body["changes"]), body["plan"]) == (
        "update", ["retry", "stop_duration"], {"start": [], "stop": [], "replace": []})
    reconcile()
    run.refresh_from_db()
    assert (run.spec_version, run.spec["stop_duration"], run.jobs.count()) == (0, 300, 3)
    assert _events("spec_updated") == ["changed retry, stop_duration"]


def test_an_active_task_or_a_terminating_service_is_still_a_conflict(sim_backend, api, apply, reconcile):
    apply(GPU8)
    task = "type: task\nname: train\ncommands: [python train.py]\nresources: {gpu: 1}\n"
    apply(task)
    body = apply(task.replace("train.py", "train2.py"), expect=409)
    assert body["code"] == "run_active"
    apply(service(3))
    reconcile()
    assert api.post("/api/v1/projects/main/runs/llm/stop/", {}, format="json").json()["status"] == "terminating"
    assert apply(service(4), expect=409)["code"] == "run_active"
