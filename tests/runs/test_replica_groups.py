"""Replica groups of a service (``groups:``, or ``replicas:`` as a list): each replica belongs to one group,
is placed with the group's resources and launched with its commands; retries and re-applies stay within
the group. Ranges of replicas with ``scaling`` run their minimum (no request metrics without a gateway)."""

import pytest

from backends.models import SimJob
from core.models import Event
from runs.models import Job, Run

pytestmark = pytest.mark.django_db

P = "/api/v1/projects/main"
GPU = "type: fleet\nname: gpu\nnodes: 1\nbackends: [sim]\nresources: {gpu: H100:8}\nblocks: 8\n"
CPU = "type: fleet\nname: cpu\nnodes: 1\nbackends: [sim]\nresources: {cpu: 16, gpu: 0}\nblocks: 4\n"
HEAD = "type: service\nname: mixed\nport: 8000\n"


def mixed(llm: int = 2, web: int = 1, web_commands: str = "[serve-web]", extra: str = "") -> str:
    return (HEAD + extra + "groups:\n"
            f"- {{name: llm, replicas: {llm}, commands: [serve-llm], resources: {{gpu: H100:1}}}}\n"
            f"- {{name: web, replicas: {web}, commands: {web_commands}, resources: {{cpu: 2, gpu: 0}}}}\n")


@pytest.fixture
def fleets(sim_backend, apply, reconcile):
    apply(GPU)
    apply(CPU)
    reconcile()


def _jobs(name: str = "mixed") -> list[tuple]:
    """(replica, group, instance, status) of each replica's latest live job."""
    jobs = Job.objects.filter(run__name=name).exclude(termination_reason="scaled_down").order_by(
        "replica_num", "submission_num")
    latest = {job.replica_num: job for job in jobs}
    return [(n, j.group, j.instance.name if j.instance else None, j.status) for n, j in sorted(latest.items())]


def _launched(name: str = "mixed") -> dict[str, list[list[str]]]:
    """The commands the sim started for each job name, in order."""
    launched: dict[str, list[list[str]]] = {}
    for workload in SimJob.objects.filter(job_name__startswith=f"{name}-").order_by("pk"):
        launched.setdefault(workload.job_name, []).append(workload.commands)
    return launched


def _running(name: str = "mixed") -> dict[str, list[str]]:
    return {w.job_name: w.commands for w in SimJob.objects.filter(job_name__startswith=f"{name}-", state="running")}


def test_each_group_is_placed_on_a_matching_instance_and_runs_its_commands(fleets, api, apply, reconcile):
    body = apply(mixed())
    assert [(g["name"], g["replicas"]) for g in body["spec"]["groups"]] == [("llm", 2), ("web", 1)]
    assert (body["spec"]["replicas"], body["spec"]["commands"]) == (3, [])
    reconcile()
    assert _jobs() == [(0, "llm", "gpu-0", "running"), (1, "llm", "gpu-0", "running"),
                       (2, "web", "cpu-0", "running")]
    assert _launched() == {"mixed-0-0": [["serve-llm"]], "mixed-0-1": [["serve-llm"]], "mixed-0-2": [["serve-web"]]}
    jobs = api.get(f"{P}/runs/mixed/jobs/").json()["results"]
    assert [(j["replica_num"], j["group"], j["instance"]) for j in jobs] == [
        (0, "llm", "gpu-0"), (1, "llm", "gpu-0"), (2, "web", "cpu-0")]
    run = api.get(f"{P}/runs/mixed/").json()
    assert (run["status"], run["health"]) == ("running", "healthy")
    assert run["replicas"] == {"desired": 3, "running": 3, "ready": 3, "groups": [
        {"name": "llm", "desired": 2, "running": 2, "ready": 2}, {"name": "web", "desired": 1, "running": 1,
                                                                   "ready": 1}]}


def test_a_groups_image_and_workload_fields_reach_the_launch(fleets, apply, reconcile):
    apply(HEAD + "groups:\n- {name: llm, replicas: 1, image: vllm/vllm-openai, resources: {gpu: 1}}\n"
                 "- {name: web, replicas: 1, commands: [serve], python: 3.12, privileged: true, "
                 "resources: {gpu: 0}}\n")
    reconcile()
    launched = {w.job_name: (w.commands, w.image, w.workload) for w in SimJob.objects.order_by("pk")}
    assert launched["mixed-0-0"] == ([], "vllm/vllm-openai", {})  # an image-only group runs its entrypoint
    commands, image, workload = launched["mixed-0-1"]
    assert (commands, image, workload["python"], workload["privileged"]) == (["serve"], "", "3.12", True)


def test_a_group_that_fits_nowhere_says_what_it_needs(sim_backend, api, apply, reconcile):
    apply(CPU)
    reconcile()
    apply(mixed(llm=1))
    reconcile()
    run = api.get(f"{P}/runs/mixed/").json()
    assert (run["status"], run["termination_reason"]) == ("failed", "no_capacity")
    assert "gpu H100 x1" in run["status_message"] and "mixed-0-0" in run["status_message"]


def test_the_legacy_list_form_of_replicas(fleets, api, apply, reconcile):
    body = apply(HEAD + "resources: {cpu: 2, gpu: 0}\nreplicas:\n- {count: 2, commands: [a]}\n"
                        "- {name: big, replicas: 1, commands: [b], resources: {gpu: 1}}\n")
    groups = body["spec"]["groups"]
    # A group without resources takes the service's; names default to the position.
    assert [(g["name"], g["replicas"], g["resources"]["gpu"]["count"]) for g in groups] == [
        ("0", 2, {"min": 0, "max": 0}), ("big", 1, {"min": 1, "max": 1})]
    reconcile()
    assert _jobs() == [(0, "0", "cpu-0", "running"), (1, "0", "cpu-0", "running"), (2, "big", "gpu-0", "running")]
    assert _running() == {"mixed-0-0": ["a"], "mixed-0-1": ["a"], "mixed-0-2": ["b"]}


@pytest.mark.parametrize(("text", "field", "words"), [
    (HEAD + "groups: [{name: a, replicas: 1, commands: [x]}, {name: a, replicas: 1, commands: [y]}]\n",
     "groups[1].name", "twice"),
    (HEAD + "replicas: 2\ngroups: [{replicas: 1, commands: [x]}]\n", "replicas", "mutually exclusive"),
    (HEAD + "commands: [x]\ngroups: [{replicas: 1, commands: [y]}]\n", "commands", "not allowed"),
    (HEAD + "groups: [{replicas: 1, commands: [y]}]\nscaling: {metric: rps, target: 5}\n", "scaling", "not allowed"),
    (HEAD + "groups: [{replicas: 1..4, commands: [y]}]\n", "groups[0].replicas", "needs 'scaling'"),
    (HEAD + "commands: [x]\nreplicas: 1..4\n", "replicas", "needs 'scaling'"),
    (HEAD + "commands: [x]\nreplicas: 2\nscaling: {metric: rps, target: 5}\n", "scaling", "range"),
    (HEAD + "groups: [{name: Web_1, replicas: 1, commands: [y]}]\n", "groups[0].name", "invalid"),
    (HEAD + "groups: [{replicas: 1}]\n", "groups[0].commands", "either 'commands' or 'image'"),
    (HEAD + "groups: []\n", "groups", "at least one"),
    (HEAD + "groups: [{replicas: 1, commands: [y], scaling: {metric: cpu, target: 5}}]\n",
     "groups[0].scaling.metric", "one of"),
    (HEAD + "groups: [{replicas: 0..2, commands: [y], scaling: {metric: rps, target: 5}}]\n", "groups",
     "no request metrics"),
    (HEAD + "spot_policy: spot\ngroups: [{replicas: 1, commands: [y], spot_policy: auto}]\n", "spot_policy",
     "both"),
])
def test_refused_groups_name_the_field(fleets, api, apply, text, field, words):
    body = apply(text, expect=400)
    assert body["field"] == field and words in body["detail"], body
    assert not Run.objects.exists()


def test_a_range_with_scaling_runs_its_minimum_and_says_why(fleets, api, apply, reconcile):
    body = apply(HEAD + "groups:\n- {name: llm, replicas: 1, commands: [a], resources: {gpu: 1}}\n"
                        "- {name: web, replicas: 0..3, commands: [b], scaling: {metric: rps, target: 10}}\n")
    web = body["spec"]["groups"][1]
    assert (web["replicas"], web["replicas_max"], web["scaling"]["target"]) == (0, 3, 10.0)
    reconcile()
    assert _jobs() == [(0, "llm", "gpu-0", "running")]
    message = Event.objects.get(resource_name="mixed", kind="scaling").message
    assert "no request metrics" in message and "group web: 0 of 0..3" in message
    # The same for a plain service (once refused as "autoscaling is not supported yet").
    body = apply("type: service\nname: plain\nport: 8000\ncommands: [c]\nresources: {gpu: 0}\n"
                 "replicas: 2..4\nscaling: {metric: rps, target: 10, window: 1m}\n")
    assert (body["spec"]["replicas"], body["spec"]["replicas_max"], body["spec"]["scaling"]["window"]) == (2, 4, 60)
    reconcile()
    assert [job[1:] for job in _jobs("plain")] == [("", "cpu-0", "running")] * 2
    assert "2 of 2..4" in Event.objects.get(resource_name="plain", kind="scaling").message


def test_a_failed_replica_is_retried_in_its_group(fleets, api, apply, reconcile):
    apply(mixed(extra="retry: {on_events: [error], interval: 1s}\n"))
    reconcile()
    assert api.post(f"{P}/backends/sim/faults/", {"kind": "crash_job", "job": "mixed-0-2", "exit_status": 3},
                    format="json").status_code in (200, 201)
    reconcile()
    api.delete(f"{P}/backends/sim/faults/")
    reconcile()
    submissions = list(Job.objects.filter(run__name="mixed", replica_num=2).order_by("submission_num")
                       .values_list("submission_num", "group", "status"))
    assert submissions[0] == (0, "web", "failed") and len(submissions) >= 2
    assert {group for _, group, _ in submissions} == {"web"}
    assert _jobs()[2] == (2, "web", "cpu-0", "running")
    assert _launched()["mixed-0-2"] == [["serve-web"]] * len(submissions)
    assert api.get(f"{P}/runs/mixed/").json()["status"] == "running"


def test_reapplying_scales_one_group_only(fleets, api, apply, reconcile):
    apply(mixed())
    reconcile()
    before = {n: Job.objects.get(run__name="mixed", replica_num=n).pk for n in (0, 1, 2)}
    body = apply(mixed(web=3))
    assert (sorted(body["changes"]), body["plan"]) == (["groups", "replicas"], {"start": [3, 4], "stop": [],
                                                                                  "replace": []})
    reconcile()
    assert _jobs() == [(0, "llm", "gpu-0", "running"), (1, "llm", "gpu-0", "running"),
                       (2, "web", "cpu-0", "running"), (3, "web", "cpu-0", "running"),
                       (4, "web", "cpu-0", "running")]
    assert {n: Job.objects.get(run__name="mixed", replica_num=n).pk for n in (0, 1, 2)} == before
    body = apply(mixed(llm=1, web=3))
    assert body["plan"] == {"start": [], "stop": [1], "replace": []}
    assert Job.objects.get(run__name="mixed", replica_num=1).status_message == "scaled down to 1 replicas in group llm"
    reconcile()
    stopped = Job.objects.get(run__name="mixed", replica_num=1)
    assert (stopped.status, stopped.termination_reason) == ("terminated", "scaled_down")
    assert [row[:2] for row in _jobs()] == [(0, "llm"), (2, "web"), (3, "web"), (4, "web")]
    scaled = list(Event.objects.filter(resource_name="mixed", kind="scaled").order_by("pk")
                  .values_list("message", flat=True))
    assert scaled == ["from 3 to 5 replicas (web: 1 -> 3)", "from 5 to 4 replicas (llm: 2 -> 1)"]
    run = api.get(f"{P}/runs/mixed/").json()
    assert (run["health"], [g["running"] for g in run["replicas"]["groups"]]) == ("healthy", [1, 3])


def test_changing_one_groups_commands_rolls_that_group_only(fleets, api, apply, reconcile):
    apply(mixed(web=2))
    reconcile()
    llm = {n: Job.objects.get(run__name="mixed", replica_num=n).pk for n in (0, 1)}
    body = apply(mixed(web=2, web_commands="[serve-web, --v2]"))
    assert (list(body["changes"]), body["plan"]) == (["groups"], {"start": [], "stop": [], "replace": [2, 3]})
    reconcile(rounds=30)
    run = Run.objects.get(name="mixed")
    assert (run.status, run.health, run.spec_version) == ("running", "healthy", 1)
    live = _jobs()
    assert [row[1:] for row in live] == [("llm", "gpu-0", "running")] * 2 + [("web", "cpu-0", "running")] * 2
    assert {n: Job.objects.get(run__name="mixed", replica_num=n).pk for n in (0, 1)} == llm  # untouched
    assert sorted(_running().values()) == [["serve-llm"]] * 2 + [["serve-web", "--v2"]] * 2
    replaced = Job.objects.filter(run__name="mixed", replica_num__in=(2, 3))
    assert set(replaced.values_list("status", "termination_reason")) == {("terminated", "scaled_down")}


def test_the_runs_list_counts_every_services_groups_in_a_constant_number_of_queries(project, api):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from tests import factories

    def page(n: int) -> tuple[list[dict], int]:
        for _ in range(n):
            run = factories.RunFactory(project=project, type="service", status="running", spec={
                "replicas": 2, "groups": [{"name": "llm", "replicas": 1}, {"name": "web", "replicas": 1}]})
            factories.JobFactory(run=run, replica_num=0, group="llm", status="running", ready=True)
            factories.JobFactory(run=run, replica_num=1, group="web", status="running", ready=False)
        with CaptureQueriesContext(connection) as queries:
            results = api.get(f"{P}/runs/").json()["results"]
        return results, len(queries)

    _, few = page(1)
    many, more = page(4)
    assert few == more
    assert {tuple(tuple(g.values()) for g in r["replicas"]["groups"]) for r in many} == {
        (("llm", 1, 1, 1), ("web", 1, 1, 0))}
