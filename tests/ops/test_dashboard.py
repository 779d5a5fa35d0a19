"""The admin index shows the dashboard (blocks per fleet, runs by status, services by health, latest events)
above Django's app list, to staff only, in a fixed number of queries."""

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from core.models import Event
from tests import factories

pytestmark = pytest.mark.django_db

GPU8 = "type: fleet\nname: gpu8\nnodes: 1\nbackends: [sim]\nresources:\n  gpu: H100:8\nblocks: 8\n"
LLM = "type: service\nname: llm\ncommands: [serve]\nport: 8000\nreplicas: 3\nresources: {gpu: 1}\nfleets: [gpu8]\n"


@pytest.fixture
def staff(db, client):
    user = factories.UserFactory(username="ops", is_staff=True)
    client.force_login(user)
    return user


def row(page: str, attribute: str, value: str) -> str:
    """The text of the dashboard's table row marked ``attribute="value"``, tags stripped."""
    match = re.search(rf'<tr[^>]*{attribute}="{re.escape(value)}"[^>]*>(.*?)</tr>', page, re.S)
    assert match, f"no row {attribute}={value}"
    return " ".join(re.sub(r"<[^>]+>", " ", match.group(1)).split())


def test_staff_see_blocks_runs_services_and_events_above_the_app_list(staff, client, sim_backend, apply, reconcile):
    apply(GPU8)
    apply(LLM)
    reconcile()
    factories.RunFactory(project=sim_backend.project, name="old", status="terminated")
    page = client.get("/admin/").content.decode()
    assert row(page, "data-fleet", "main/gpu8") == "main/gpu8 3 busy / 5 idle"
    assert 'style="width: 38%"' in page  # 3 of 8 blocks busy: the bar's busy part
    assert 'aria-label="3 busy, 5 idle of 8 blocks"' in page
    assert row(page, "data-status", "running") == "running 1"
    assert row(page, "data-status", "pending") == "pending 0"
    assert 'data-status="terminated"' not in page  # finished runs are history: the runs list has them
    assert row(page, "data-health", "healthy") == "healthy 1"
    assert row(page, "data-health", "down") == "down 0"
    latest = Event.objects.order_by("-created_at", "-id").first()
    assert f"<td>{latest.kind}</td>" in page
    assert page.index('id="stackyard-dashboard"') < page.index('id="content-main"')  # the app list stays, below
    assert 'href="/admin/runs/run/"' in page


def test_only_the_latest_20_events_are_listed(staff, client, project):
    Event.objects.bulk_create(Event(project=project, resource_type="run", resource_name=f"r{i}", kind=f"kind-{i}")
                              for i in range(30))
    page = client.get("/admin/").content.decode()
    listed = re.findall(r"<td>kind-(\d+)</td>", page)
    assert len(listed) == 20 and set(map(int, listed)) == set(range(10, 30))


def test_the_dashboard_takes_the_same_queries_for_5_and_50_runs(staff, client, project, sim_backend):
    fleet = factories.FleetFactory(project=project, name="gpu8")
    instance = factories.InstanceFactory(fleet=fleet, backend=sim_backend, total_blocks=64, status="busy")

    def add_runs(first: int, last: int) -> None:
        for i in range(first, last):
            run = factories.RunFactory(project=project, name=f"svc-{i}", type="service", status="running",
                                       health="healthy")
            factories.JobFactory(run=run, instance=instance, status="running")
            Event.objects.create(project=project, resource_type="run", resource_name=run.name, kind="running")

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get("/admin/").status_code == 200
        return len(captured)

    add_runs(0, 5)
    few = queries()
    add_runs(5, 50)
    assert queries() == few
    assert row(client.get("/admin/").content.decode(), "data-health", "healthy") == "healthy 50"


def test_the_dashboard_is_for_staff_only(client, user):
    assert client.get("/admin/").status_code == 302  # anonymous: to the login form
    client.force_login(user)  # a project admin, not staff
    response = client.get("/admin/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
