"""A run's ``idle_duration``: the instances an elastic fleet grows for the run are retired once idle
that long after it, instead of after the fleet's ``idle_duration``; other instances keep the fleet's."""

from datetime import timedelta

import pytest
from django.utils import timezone

from fleets.models import Instance
from runs.models import Job

pytestmark = pytest.mark.django_db

P = "/api/v1/projects/main"
FLEET = "type: fleet\nname: elastic\nnodes: 0..3\nbackends: [sim]\nresources: {gpu: H100:8}\nidle_duration: 1h\n"


def task(apply, name: str, idle: str = "") -> None:
    apply(f"type: task\nname: {name}\ncommands: [torchrun]\nresources: {{gpu: 8}}\n{idle}")


def instance_of(run: str) -> Instance:
    return Job.objects.select_related("instance").get(run__name=run).instance


def idle_for(minutes: int) -> None:
    Instance.objects.filter(status="idle").update(idle_since=timezone.now() - timedelta(minutes=minutes))


def statuses() -> dict[str, tuple[str, str]]:
    return {i.name: (i.status, i.termination_reason) for i in Instance.objects.all()}


def test_a_runs_idle_duration_retires_the_instance_grown_for_it(sim_backend, api, apply, reconcile):
    apply(FLEET)
    task(apply, "short", "idle_duration: 10m\n")
    task(apply, "plain")
    task(apply, "long", "idle_duration: 2h\n")
    reconcile()
    grown = {run: instance_of(run) for run in ("short", "plain", "long")}
    assert {run: (i.status, i.idle_duration) for run, i in grown.items()} == {
        "short": ("busy", 600), "plain": ("busy", None), "long": ("busy", 7200)}
    for run in grown:
        assert api.post(f"{P}/runs/{run}/stop/", {}, format="json").status_code == 202
    reconcile()
    assert {status for status, _ in statuses().values()} == {"idle"}

    idle_for(9)
    reconcile()
    assert {status for status, _ in statuses().values()} == {"idle"}  # not before the run's 10 minutes

    idle_for(11)
    reconcile()
    assert statuses() == {grown["short"].name: ("terminated", "idle_timeout"), grown["plain"].name: ("idle", ""),
                          grown["long"].name: ("idle", "")}

    idle_for(61)  # past the fleet's hour: the instance grown for a run without idle_duration goes
    reconcile()
    assert statuses()[grown["plain"].name] == ("terminated", "idle_timeout")
    assert statuses()[grown["long"].name] == ("idle", "")  # its run keeps it for two hours

    idle_for(121)
    reconcile()
    assert {status for status, _ in statuses().values()} == {"terminated"}


def test_an_instance_not_grown_for_the_run_keeps_the_fleets_idle_duration(sim_backend, api, apply, reconcile):
    apply(FLEET.replace("nodes: 0..3", "nodes: {min: 0, target: 1, max: 3}"))
    reconcile()
    [pooled] = Instance.objects.all()
    task(apply, "short", "idle_duration: 10m\n")
    reconcile()
    assert instance_of("short").pk == pooled.pk and instance_of("short").idle_duration is None
    assert api.post(f"{P}/runs/short/stop/", {}, format="json").status_code == 202
    reconcile()
    idle_for(11)
    reconcile()
    assert statuses() == {pooled.name: ("idle", "")}  # the fleet's hour, not the run's 10 minutes
    idle_for(61)
    reconcile()
    assert statuses() == {pooled.name: ("terminated", "idle_timeout")}
