"""``placement: cluster`` through the API and the reconcilers on the sim backend (two regions, two zones
each): every instance of the fleet in the zone its first instance chose, with the fleet's placement group;
no instance sent elsewhere when that zone has no capacity; runs growing the fleet stay there; the group
deleted once the fleet is gone."""

import pytest

from backends.drivers.base import TransientError
from backends.drivers.registry import get_driver
from backends.models import SimPlacementGroup
from core.models import Event
from fleets.instances import process_terminating_instances
from fleets.models import Fleet, Instance
from runs.models import Run

pytestmark = pytest.mark.django_db

FAULTS = "/api/v1/projects/main/backends/sim/faults/"


def cluster_yaml(nodes: str, name: str = "cl", extra: str = "") -> str:
    return (f"type: fleet\nname: {name}\nnodes: {nodes}\nplacement: cluster\nresources: {{gpu: L4:1}}\nblocks: 1\n"
            f"{extra}")


def places(fleet: str, live_only: bool = False) -> set[tuple[str, str]]:
    instances = Instance.objects.filter(fleet__name=fleet)
    if live_only:
        instances = instances.exclude(status="terminated")
    return set(instances.values_list("region", "availability_zone"))


def live(fleet: str) -> list[str]:
    return list(Instance.objects.filter(fleet__name=fleet).exclude(status="terminated").order_by("instance_num")
                .values_list("name", flat=True))


def test_every_instance_lands_in_the_one_zone_the_first_chose_within_the_fleets_filters(sim_backend, api, apply,
                                                                                       reconcile):
    assert sorted(get_driver(sim_backend).locations()) == ["eu-west-1", "us-east-1"]  # two regions, 2 zones each
    apply(cluster_yaml("4", extra="availability_zones: [eu-west-1b, us-east-1a]\n"))
    reconcile()
    fleet = Fleet.objects.get(name="cl")
    assert (fleet.status, fleet.cluster_zone) == ("active", "eu-west-1/eu-west-1b")
    assert list(Instance.objects.filter(fleet=fleet).values_list("status", flat=True)) == ["idle"] * 4
    assert places("cl") == {("eu-west-1", "eu-west-1b")}
    # The sim holds the fleet's cluster placement group, and every VM was launched into it.
    group = SimPlacementGroup.objects.get(backend=sim_backend)
    assert (group.name, group.region, group.strategy, group.deleted_at) == (fleet.placement_group, "eu-west-1",
                                                                            "cluster", None)
    assert fleet.placement_group.startswith("stackyard-main-cl-")
    vms = sim_backend.sim_instances.values_list("placement_group", "availability_zone")
    assert set(vms) == {(fleet.placement_group, "eu-west-1b")} and len(vms) == 4
    assert Event.objects.filter(resource_name="cl", kind="cluster_zone_chosen").count() == 1
    shown = api.get("/api/v1/projects/main/fleets/cl/").json()
    assert (shown["cluster_zone"], shown["placement_group"]) == ("eu-west-1/eu-west-1b", fleet.placement_group)


def test_no_capacity_in_the_cluster_zone_never_sends_an_instance_elsewhere(sim_backend, api, apply, reconcile):
    apply(cluster_yaml("2"))
    apply("type: fleet\nname: spread\nnodes: 2\nresources: {gpu: L4:1}\nblocks: 1\n")  # placement: any
    reconcile()
    assert places("cl") == places("spread") == {("eu-west-1", "eu-west-1a")}
    api.post(FAULTS, {"kind": "no_capacity", "region": "eu-west-1", "availability_zone": "eu-west-1a"},
             format="json")
    for name in ("cl-0", "spread-0"):
        api.post(FAULTS, {"kind": "interrupt_instance", "instance": name}, format="json")
    reconcile()
    # The fleet with placement: any refills elsewhere; the cluster fleet does not.
    replacement = Instance.objects.filter(fleet__name="spread").exclude(status="terminated").latest("instance_num")
    assert len(live("spread")) == 2 and replacement.availability_zone != "eu-west-1a"
    assert live("cl") == ["cl-1"]
    assert places("cl") == {("eu-west-1", "eu-west-1a")}  # every instance ever made, failed ones included
    failed = Instance.objects.filter(fleet__name="cl", termination_reason="no_capacity")
    assert failed.exists()
    assert all("cluster zone eu-west-1/eu-west-1a" in message for message in failed.values_list("status_message",
                                                                                                flat=True))
    fleet = Fleet.objects.get(name="cl")
    assert fleet.status_message.startswith("cannot reach 2 instance(s): cluster zone eu-west-1/eu-west-1a: ")
    assert "no capacity in eu-west-1a" in fleet.status_message


def test_runs_growing_a_cluster_fleet_stay_in_its_zone(sim_backend, api, apply, reconcile):
    apply(cluster_yaml("{min: 0, target: 1, max: 3}"))
    reconcile()
    assert Fleet.objects.get(name="cl").cluster_zone == "eu-west-1/eu-west-1a"
    for name in ("t1", "t2"):
        apply(f"type: task\nname: {name}\ncommands: ['sleep 1000']\nresources: {{gpu: 1}}\nfleets: [cl]\n")
    reconcile()
    assert live("cl") == ["cl-0", "cl-1"]  # t2 grew the fleet, in its zone
    assert places("cl") == {("eu-west-1", "eu-west-1a")}
    assert set(Run.objects.values_list("status", flat=True)) == {"running"}
    # A run that wants another region cannot grow the cluster there: it fails, naming the zone.
    apply("type: task\nname: us\ncommands: ['sleep 1000']\nresources: {gpu: 1}\nfleets: [cl]\nregions: [us-east-1]\n")
    reconcile()
    us = Run.objects.get(name="us")
    assert us.status == "failed" and "cluster zone eu-west-1/eu-west-1a" in us.status_message
    # With the zone out of capacity, a run that would grow the fleet does not take it elsewhere either.
    api.post(FAULTS, {"kind": "no_capacity", "region": "eu-west-1", "availability_zone": "eu-west-1a"},
             format="json")
    apply("type: task\nname: t3\ncommands: ['sleep 1000']\nresources: {gpu: 1}\nfleets: [cl]\n")
    reconcile()
    t3 = Run.objects.get(name="t3")
    assert t3.status == "failed" and "eu-west-1/eu-west-1a" in t3.status_message
    assert places("cl") == {("eu-west-1", "eu-west-1a")} and live("cl") == ["cl-0", "cl-1"]


def test_the_placement_group_is_deleted_once_the_fleet_is_gone(sim_backend, api, apply, reconcile):
    apply(cluster_yaml("2"))
    reconcile()
    name = Fleet.objects.get(name="cl").placement_group
    driver = get_driver(sim_backend)
    with pytest.raises(TransientError, match="in use by 2 instance"):  # as EC2: not while instances are in it
        driver.delete_placement_group(region="eu-west-1", name=name)
    assert api.delete("/api/v1/projects/main/fleets/cl/").json()["status"] == "terminating"
    Instance.objects.update(lease_until=None)  # due at once (the reconcile fixture does the same)
    process_terminating_instances()
    fleet = Fleet.objects.get(name="cl")
    assert (fleet.status, fleet.placement_group) == ("terminated", name)
    # Until its group is deleted, the finished fleet's row (the only record of the group) is kept.
    refused = api.delete("/api/v1/projects/main/fleets/cl/")
    assert refused.status_code == 409 and name in refused.json()["detail"]
    reconcile()
    assert Fleet.objects.get(name="cl").placement_group == ""
    assert SimPlacementGroup.objects.get(name=name).deleted_at is not None
    assert Event.objects.filter(resource_name="cl", kind="placement_group_deleted", message=name).exists()
    assert api.delete("/api/v1/projects/main/fleets/cl/").status_code in (200, 204)
    # Applying the fleet again makes a new group (named after the new fleet row).
    apply(cluster_yaml("1"))
    reconcile()
    assert Fleet.objects.get(name="cl").placement_group not in ("", name)
    assert SimPlacementGroup.objects.filter(deleted_at__isnull=True).count() == 1
