"""Service health: replicas become ready once their probes pass, health follows, and it shows everywhere."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from tests import factories

pytestmark = pytest.mark.django_db

P = "/api/v1/projects/main"
FAULTS = f"{P}/backends/sim/faults/"
GPU8 = "type: fleet\nname: gpu8\nnodes: 1\nbackends: [sim]\nresources:\n  gpu: H100:8\nblocks: 8\n"
LLM = "type: service\nname: llm\ncommands: [serve]\nport: 8000\nreplicas: 3\nresources: {gpu: 1}\nfleets: [gpu8]\n"
PROBED = LLM + "probes: [{type: http, url: /health, ready_after: 2}]\n"


def _run(api, name: str = "llm") -> dict:
    return api.get(f"{P}/runs/{name}/").json()


def _state(api, name: str = "llm") -> tuple:
    run = _run(api, name)
    return run["health"], run["replicas"]


def _health_events(api, name: str = "llm") -> list[str]:
    events = api.get(f"{P}/events/?resource_type=run&resource_name={name}&kind=health").json()["results"]
    return [e["message"] for e in reversed(events)]


def _poll(reconcile) -> None:
    """One pass of every reconciler: each running job is polled once (reconcile clears the leases first)."""
    reconcile(rounds=1)


@pytest.fixture
def fleet(sim_backend, apply, reconcile):
    apply(GPU8)
    reconcile()


def test_replicas_are_ready_after_ready_after_passing_polls(fleet, api, apply, reconcile):
    body = apply(PROBED)
    assert (body["resource"]["health"], body["resource"]["replicas"]) == ("down", {"desired": 3, "running": 0,
                                                                                    "ready": 0})
    _poll(reconcile)  # placed and started: running, no probe has passed yet
    assert _state(api) == ("down", {"desired": 3, "running": 3, "ready": 0})
    _poll(reconcile)  # one pass of two
    assert _state(api) == ("down", {"desired": 3, "running": 3, "ready": 0})
    _poll(reconcile)
    assert _state(api) == ("healthy", {"desired": 3, "running": 3, "ready": 3})
    events = _health_events(api)
    assert [e.split(":")[0] for e in events] == ["down", "healthy"]
    assert events[-1] == "healthy: 3/3 replicas ready (3 running)"


def test_a_failing_probe_degrades_the_service_until_it_passes_again(fleet, api, apply, reconcile):
    apply(PROBED)
    reconcile()
    assert _state(api) == ("healthy", {"desired": 3, "running": 3, "ready": 3})
    assert api.post(FAULTS, {"kind": "probe_fail", "job": "llm-0-1"}, format="json").status_code == 201
    _poll(reconcile)
    assert _state(api) == ("degraded", {"desired": 3, "running": 3, "ready": 2})
    assert _run(api)["status"] == "running"  # a replica that is not ready keeps running
    assert api.delete(f"{FAULTS}?kind=probe_fail").status_code in (200, 204)
    _poll(reconcile)  # passing again, but ready_after 2 counts from the failure
    assert _state(api)[0] == "degraded"
    _poll(reconcile)
    assert _state(api) == ("healthy", {"desired": 3, "running": 3, "ready": 3})
    events = _health_events(api)
    assert [e.split(":")[0] for e in events] == ["down", "healthy", "degraded", "healthy"]  # one per change
    assert events[-2:] == ["degraded: 2/3 replicas ready (3 running)", "healthy: 3/3 replicas ready (3 running)"]


def test_probe_fail_on_every_replica_is_down(fleet, api, apply, reconcile):
    apply(PROBED)
    reconcile()
    for n in range(3):
        api.post(FAULTS, {"kind": "probe_fail", "job": f"llm-0-{n}"}, format="json")
    _poll(reconcile)
    assert _state(api) == ("down", {"desired": 3, "running": 3, "ready": 0})
    assert _health_events(api)[-1] == "down: 0/3 replicas ready (3 running)"


def test_a_service_without_probes_is_healthy_once_its_replicas_run(fleet, api, apply, reconcile):
    body = apply(LLM)
    assert body["resource"]["health"] == "down"
    _poll(reconcile)
    assert _state(api) == ("healthy", {"desired": 3, "running": 3, "ready": 3})
    # A probe_fail fault means nothing to a job without probes.
    api.post(FAULTS, {"kind": "probe_fail", "job": "llm-0-0"}, format="json")
    _poll(reconcile)
    assert _state(api)[0] == "healthy"
    assert api.post(f"{P}/runs/llm/stop/", {}, format="json").status_code == 202
    reconcile()
    run = _run(api)
    assert (run["status"], run["health"], run["replicas"]) == ("terminated", "down",
                                                               {"desired": 3, "running": 0, "ready": 0})
    assert _health_events(api)[-2:] == ["healthy: 3/3 replicas ready (3 running)",
                                        "down: 0/3 replicas ready (0 running)"]


def test_tasks_have_no_replicas_nor_health(fleet, api, apply, reconcile):
    apply("type: task\nname: train\ncommands: [train]\nresources: {gpu: 1}\nfleets: [gpu8]\n")
    reconcile()
    run = _run(api, "train")
    assert (run["status"], run["replicas"], run["health"]) == ("running", None, None)
    assert _health_events(api, "train") == []


def test_run_list_counts_ready_replicas_in_a_constant_number_of_queries(project, api):
    def runs(n: int) -> tuple[list[dict], int]:
        for _ in range(n):
            run = factories.RunFactory(project=project, type="service",
                                       status="running", health="degraded", spec={"replicas": 2})
            factories.JobFactory(run=run, replica_num=0, status="running", ready=True)
            factories.JobFactory(run=run, replica_num=1, status="running", ready=False)
        with CaptureQueriesContext(connection) as queries:
            results = api.get(f"{P}/runs/").json()["results"]
        return results, len(queries)

    one, few = runs(1)
    many, more = runs(4)
    assert few == more
    assert {(r["health"], tuple(r["replicas"].values())) for r in many} == {("degraded", (2, 2, 1))}


# --- admin and metrics ------------------------------------------------------------------------


def test_admin_run_list_shows_health_in_colour_and_ready_replicas(admin_client, project):
    for name, health in (("ok", "healthy"), ("half", "degraded"), ("gone", "down")):
        factories.RunFactory(project=project, name=name, type="service", status="running", health=health,
                             spec={"replicas": 2})
    factories.RunFactory(project=project, name="train", type="task", status="running")
    page = admin_client.get(reverse("admin:runs_run_changelist")).content.decode()
    assert '<span style="color: #2e7d32; font-weight: bold">healthy</span>' in page
    assert '<span style="color: #ef6c00; font-weight: bold">degraded</span>' in page
    assert '<span style="color: #c62828; font-weight: bold">down</span>' in page
    assert "0/2" in page


def test_metrics_expose_service_health_and_replicas(fleet, client, api, apply, reconcile):
    apply(PROBED)
    reconcile()
    api.post(FAULTS, {"kind": "probe_fail", "job": "llm-0-2"}, format="json")
    _poll(reconcile)
    body = client.get("/metrics").content.decode()
    assert "# TYPE stackyard_service_health gauge" in body
    assert 'stackyard_service_health{health="degraded",project="main",run="llm"} 1' in body
    assert 'stackyard_service_health{health="healthy",project="main",run="llm"} 0' in body
    for state, n in (("desired", 3), ("running", 3), ("ready", 2)):
        assert f'stackyard_service_replicas{{project="main",run="llm",state="{state}"}} {n}' in body


def test_metrics_leave_out_finished_services_and_take_constant_queries(client, project):
    def scrape() -> tuple[str, int]:
        with CaptureQueriesContext(connection) as queries:
            body = client.get("/metrics").content.decode()
        return body, len(queries)

    factories.RunFactory(project=project, name="old", type="service", status="terminated", health="down")
    factories.RunFactory(project=project, name="svc-0", type="service", status="running", health="healthy")
    _, one = scrape()
    for i in range(1, 5):
        factories.RunFactory(project=project, name=f"svc-{i}", type="service", status="running", health="healthy")
    body, five = scrape()
    assert one == five
    assert '{health="healthy",project="main",run="svc-4"} 1' in body and 'run="old"' not in body
