"""``nodes: {min, target, max}`` through the API and the reconcilers on the sim backend: ``target``
instances at first, then ``min`` kept (after losses and idle retirement), ``max`` bounding the growth
by runs, and a re-apply raising or lowering the target."""

from datetime import timedelta

import pytest
from django.utils import timezone

from fleets.models import Fleet, Instance
from runs.models import Run

pytestmark = pytest.mark.django_db

FAULTS = "/api/v1/projects/main/backends/sim/faults/"


def fleet_yaml(nodes: str, name: str = "pool", extra: str = "") -> str:
    return f"type: fleet\nname: {name}\nnodes: {nodes}\nresources: {{gpu: L4:1}}\nblocks: 1\n{extra}"


def live(fleet: str = "pool") -> list[str]:
    return list(Instance.objects.filter(fleet__name=fleet).exclude(status="terminated").order_by("instance_num")
                .values_list("name", flat=True))


def statuses(fleet: str = "pool") -> list[tuple[str, str]]:
    return list(Instance.objects.filter(fleet__name=fleet).order_by("instance_num").values_list("name", "status"))


def test_a_new_fleet_provisions_target_instances_not_min(sim_backend, apply, reconcile):
    apply(fleet_yaml("{min: 1, target: 3, max: 5}"))
    reconcile()
    assert statuses() == [("pool-0", "idle"), ("pool-1", "idle"), ("pool-2", "idle")]
    fleet = Fleet.objects.get(name="pool")
    assert (fleet.status, fleet.status_message) == ("active", "")
    assert sim_backend.sim_instances.filter(state="running").count() == 3


def test_after_losses_the_fleet_is_refilled_to_min_not_to_target(sim_backend, api, apply, reconcile):
    apply(fleet_yaml("{min: 2, target: 3, max: 4}"))
    reconcile()
    assert live() == ["pool-0", "pool-1", "pool-2"]
    api.post(FAULTS, {"kind": "interrupt_instance", "instance": "pool-0"}, format="json")
    reconcile()
    assert live() == ["pool-1", "pool-2"]  # still at min: nothing replaced
    api.post(FAULTS, {"kind": "interrupt_instance", "instance": "pool-1"}, format="json")
    reconcile()
    # Below min now: one replacement brings it back to min (2), not to the initial target (3).
    assert live() == ["pool-2", "pool-3"]
    lost = Instance.objects.filter(name__in=["pool-0", "pool-1"]).values_list("termination_reason", flat=True)
    assert list(lost) == ["interrupted", "interrupted"]
    assert Instance.objects.get(name="pool-3").status == "idle"


def test_runs_grow_the_fleet_beyond_target_but_never_beyond_max(sim_backend, apply, reconcile):
    apply(fleet_yaml("{min: 0, target: 1, max: 2}"))
    reconcile()
    assert live() == ["pool-0"]
    for name in ("t1", "t2", "t3"):
        apply(f"type: task\nname: {name}\ncommands: ['sleep 1000']\nresources: {{gpu: 1}}\nfleets: [pool]\n")
    reconcile()
    assert statuses() == [("pool-0", "busy"), ("pool-1", "busy")]
    runs = dict(Run.objects.values_list("name", "status"))
    assert sorted(runs.values()) == ["failed", "running", "running"]
    assert "at its maximum of 2" in Run.objects.get(status="failed").status_message


def test_idle_retirement_stops_at_min(sim_backend, apply, reconcile):
    apply(fleet_yaml("{min: 1, target: 3}", extra="idle_duration: 10m\n"))
    reconcile()
    assert len(live()) == 3
    Instance.objects.update(idle_since=timezone.now() - timedelta(minutes=5))
    reconcile()
    assert len(live()) == 3  # not idle for long enough yet
    Instance.objects.update(idle_since=timezone.now() - timedelta(minutes=11))
    reconcile()
    assert len(live()) == 1  # down to min, never below
    retired = Instance.objects.filter(status="terminated").values_list("termination_reason", flat=True)
    assert sorted(retired) == ["idle_timeout", "idle_timeout"]


def test_a_reapply_raising_target_grows_the_fleet_and_lowering_it_terminates_nothing(sim_backend, apply,
                                                                                    reconcile):
    apply(fleet_yaml("{min: 1, target: 2, max: 4}"))
    reconcile()
    assert live() == ["pool-0", "pool-1"]
    assert apply(fleet_yaml("{min: 1, target: 4, max: 4}"))["action"] == "update"
    assert Fleet.objects.get(name="pool").status == "submitted"  # growing to the new target
    reconcile()
    assert live() == ["pool-0", "pool-1", "pool-2", "pool-3"]
    assert Fleet.objects.get(name="pool").status == "active"
    apply("type: task\nname: busy\ncommands: ['sleep 1000']\nresources: {gpu: 1}\nfleets: [pool]\n")
    reconcile()
    apply(fleet_yaml("{min: 1, target: 1, max: 4}"))
    reconcile()
    assert len(live()) == 4  # a lower target terminates nothing at once
    Instance.objects.filter(status="idle").update(idle_since=timezone.now() - timedelta(minutes=6))
    reconcile()
    # Idle surplus goes after idle_duration (5 min by default); the busy instance stays, min is kept.
    assert [s for _, s in statuses() if s != "terminated"] == ["busy"]
    assert Run.objects.get(name="busy").status == "running"
