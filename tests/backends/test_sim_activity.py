"""What a sim job reports of its GPUs and attached sessions: None unless a ``gpu_utilization`` or
``inactive`` fault says otherwise; the fault API validates both kinds."""

import datetime

import pytest
from django.utils import timezone

from backends.drivers.registry import get_driver
from backends.drivers.sim_faults import add_fault, clear_faults, validate_fault
from backends.models import Backend
from core.errors import InvalidInput
from projects.models import Project

pytestmark = pytest.mark.django_db


@pytest.fixture
def backend():
    return Backend.objects.create(project=Project.objects.create(name="p"), name="sim", type="sim", config={})


@pytest.fixture
def driver(backend):
    return get_driver(backend)


@pytest.fixture
def clock(monkeypatch):
    """Freeze ``timezone.now`` and move it by hand."""

    class Clock:
        now = timezone.now()

        def advance(self, seconds: float) -> None:
            self.now += datetime.timedelta(seconds=seconds)

    clock = Clock()
    monkeypatch.setattr(timezone, "now", lambda: clock.now)
    return clock


def started(driver, job_name: str) -> str:
    offer = next(o for o in driver.offers() if o.instance_type == "gpu-a100-8" and not o.spot)
    instance_id = driver.create_instance(name=f"i-{job_name}", offer=offer)
    driver.instance_state(instance_id=instance_id)  # provisioning, then running
    return driver.start_job(job_name=job_name, instance_id=instance_id, commands=["python train.py"], env={})


def test_without_a_fault_a_running_job_reports_neither(driver):
    state = driver.poll_job(workload_id=started(driver, "r-0-0"))
    assert (state.status, state.gpu_utilization, state.inactive_seconds) == ("running", None, None)


def test_gpu_utilization_fault_sets_what_the_named_job_reports(driver, backend):
    mine, other = started(driver, "r-0-0"), started(driver, "r-0-1")
    add_fault(backend, {"kind": "gpu_utilization", "job": "r-0-0", "percent": 3})
    add_fault(backend, {"kind": "gpu_utilization", "job": "r-0-0", "percent": 42.5})  # the latest wins
    assert driver.poll_jobs(workload_ids=[mine])[mine].gpu_utilization == 42.5
    assert driver.poll_job(workload_id=other).gpu_utilization is None
    clear_faults(backend, "gpu_utilization")
    assert driver.poll_job(workload_id=mine).gpu_utilization is None


def test_inactive_fault_counts_from_when_it_was_added(driver, backend, clock):
    workload_id = started(driver, "dev-0-0")
    add_fault(backend, {"kind": "inactive", "job": "dev-0-0", "seconds": 600})
    assert driver.poll_job(workload_id=workload_id).inactive_seconds == 600
    clock.advance(90)
    assert driver.poll_job(workload_id=workload_id).inactive_seconds == 690
    clear_faults(backend, "inactive")  # someone attached
    assert driver.poll_job(workload_id=workload_id).inactive_seconds is None


def test_a_stopped_job_reports_neither(driver, backend):
    workload_id = started(driver, "r-0-0")
    add_fault(backend, {"kind": "gpu_utilization", "job": "r-0-0", "percent": 3})
    driver.stop_job(workload_id=workload_id)
    state = driver.poll_job(workload_id=workload_id)
    assert (state.status, state.gpu_utilization) == ("stopped", None)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"kind": "gpu_utilization", "job": "j", "percent": 101}, "percent"),
        ({"kind": "gpu_utilization", "job": "j", "percent": -1}, "percent"),
        ({"kind": "gpu_utilization", "job": "j", "percent": "3"}, "percent"),
        ({"kind": "gpu_utilization", "job": "j", "percent": True}, "percent"),
        ({"kind": "gpu_utilization", "percent": 3}, "job"),
        ({"kind": "inactive", "job": "j", "seconds": -1}, "seconds"),
        ({"kind": "inactive", "job": "j", "seconds": 1.5}, "seconds"),
        ({"kind": "inactive", "job": "j"}, "seconds"),
        ({"kind": "inactive", "job": "j", "seconds": 1, "since": 3}, "since"),
    ],
)
def test_validate_fault_names_the_problem(payload, field):
    with pytest.raises(InvalidInput) as exc:
        validate_fault(payload)
    assert exc.value.extra["field"] == field


def test_the_fault_api_takes_both_kinds(backend):
    from tests.conftest import client_for
    from tests.factories import MembershipFactory, UserFactory

    user = UserFactory(username="ops")
    MembershipFactory(project=backend.project, user=user, role="admin")
    api, url = client_for(user), "/api/v1/projects/p/backends/sim/faults/"
    for payload in ({"kind": "gpu_utilization", "job": "r-0-0", "percent": 0},
                    {"kind": "inactive", "job": "dev-0-0", "seconds": 7200}):
        response = api.post(url, payload, format="json")
        assert response.status_code == 201, response.content
        assert response.json()["kind"] == payload["kind"]
    response = api.post(url, {"kind": "inactive", "job": "dev-0-0", "seconds": "2h"}, format="json")
    assert (response.status_code, response.json()["code"]) == (400, "invalid_fault")
    assert [f["kind"] for f in api.get(url).json()] == ["gpu_utilization", "inactive"]


def test_sleep_infinity_never_ends_even_after_other_sleeps():
    from backends.drivers.sim import plan_script

    assert plan_script(["sleep 5", "sleep infinity"]) == (None, None)  # init, then until stopped
    assert plan_script(["pip install x && sleep inf", "exit 3"]) == (None, None)
    assert plan_script(["sleep 5"]) == (5.0, 0)
