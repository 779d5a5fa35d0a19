"""``placement: cluster`` on the aws backend, against a moto server on loopback (real HTTP): the fleet's
EC2 placement group is created with ``Strategy=cluster``, every instance is launched into it in one zone,
and the group is deleted once the fleet is gone.

moto 5.2 implements no placement group call (CreatePlacementGroup answers 500) and drops
``Placement.GroupName`` from the instances it launches. So the driver's clients answer the three
placement-group operations themselves from ``PlacementGroups`` (an EC2 stand-in with EC2's error codes,
which asks the moto server whether a group's instances are gone), and the ``RunInstances`` requests are
read as sent; instances, zones and termination are moto's.
"""

import dataclasses

import pytest

from backends.drivers import aws_calls
from backends.drivers.base import TransientError
from backends.drivers.registry import get_driver
from backends.models import Backend
from fleets.models import Fleet, Instance
from tests.moto_server import moto_server  # noqa: F401  (the fixture)

pytestmark = pytest.mark.django_db

P = "/api/v1/projects/main"
FLEET = "type: fleet\nname: mpi\nnodes: 2\nplacement: cluster\nbackends: [cloud]\nresources: {cpu: 2, gpu: 0}\n"


@dataclasses.dataclass
class PlacementGroups:
    """What EC2 would hold: groups by name, and the RunInstances requests (with the ids they launched)."""

    moto: object
    groups: dict = dataclasses.field(default_factory=dict)
    launches: list = dataclasses.field(default_factory=list)  # [(request body, [instance ids])]
    asked: list = dataclasses.field(default_factory=list)

    def answer(self, operation: str, body: dict):
        self.asked.append(operation)
        name = body.get("GroupName", "")
        if operation == "CreatePlacementGroup":
            if name in self.groups:
                return self._error("InvalidPlacementGroup.Duplicate")
            tags = {body[key]: body[key.replace(".Key", ".Value")] for key in body
                    if key.startswith("TagSpecification.1.Tag.") and key.endswith(".Key")}
            self.groups[name] = {"Strategy": body.get("Strategy"), "Tags": tags,
                                 "ResourceType": body.get("TagSpecification.1.ResourceType")}
            return {}
        if operation == "DeletePlacementGroup":
            if name not in self.groups:
                return self._error("InvalidPlacementGroup.Unknown")
            if self._instances_in(name):
                return self._error("InvalidPlacementGroup.InUse")
            del self.groups[name]
            return {}
        return None  # any other operation goes to moto

    def _instances_in(self, name: str) -> list[str]:
        """The instances launched into the group that moto does not report terminated."""
        ids = [i for body, launched in self.launches if body.get("Placement.GroupName") == name for i in launched]
        if not ids:
            return []
        reservations = self.moto.ec2().describe_instances(InstanceIds=ids)["Reservations"]
        return [i["InstanceId"] for r in reservations for i in r["Instances"] if i["State"]["Name"] != "terminated"]

    @staticmethod
    def _error(code: str):
        return {"Error": {"Code": code, "Message": f"{code} (placement group stand-in)"},
                "ResponseMetadata": {"HTTPStatusCode": 400}}


@pytest.fixture
def ec2_groups(monkeypatch, moto_server):  # noqa: F811
    """The driver's clients answer the placement-group calls from a ``PlacementGroups`` (see the module
    docstring) and record each ``RunInstances`` request they send to moto."""
    store = PlacementGroups(moto_server)
    make_client = aws_calls.make_client
    pending: list = []

    class Http:
        def __init__(self, status: int):
            self.status_code = status

    def before_call(model, params, **_):
        body = params.get("body") or {}
        if model.name == "RunInstances":
            pending.append(dict(body))
            return None
        answer = store.answer(model.name, body)
        if answer is None:
            return None
        status = answer.get("ResponseMetadata", {}).get("HTTPStatusCode", 200)
        return Http(status), {**answer, "ResponseMetadata": {"HTTPStatusCode": status}}

    def after_call(model, parsed, **_):
        if model.name == "RunInstances" and pending:
            store.launches.append((pending.pop(0), [i["InstanceId"] for i in parsed.get("Instances", [])]))

    def hooked(*args, **kwargs):
        client = make_client(*args, **kwargs)
        client.meta.events.register("before-call.ec2", before_call)
        client.meta.events.register("after-call.ec2", after_call)
        return client

    monkeypatch.setattr(aws_calls, "make_client", hooked)
    return store


@pytest.fixture
def cloud(api, moto_server, ec2_groups):  # noqa: F811
    body = {"name": "cloud", "type": "aws", "config": moto_server.config(), "credentials": moto_server.credentials()}
    response = api.post(f"{P}/backends/", body, format="json")
    assert response.status_code == 201, response.content
    return Backend.objects.get(name="cloud")


def test_a_cluster_fleet_gets_a_cluster_placement_group_its_instances_share_and_lose_with_it(
        cloud, ec2_groups, moto_server, api, apply, reconcile):  # noqa: F811
    apply(FLEET)
    reconcile()
    fleet = Fleet.objects.get(name="mpi")
    instances = list(Instance.objects.filter(fleet=fleet).order_by("instance_num"))
    assert [i.status for i in instances] == ["idle", "idle"], [i.status_message for i in instances]
    region, zone = fleet.cluster_zone.split("/")
    assert region == "us-east-1" and zone.startswith("us-east-1")
    # One group, made once, with strategy cluster and our tag; its name is on the fleet.
    assert fleet.placement_group.startswith("stackyard-main-mpi-")
    assert list(ec2_groups.groups) == [fleet.placement_group]
    group = ec2_groups.groups[fleet.placement_group]
    assert group == {"Strategy": "cluster", "Tags": {"stackyard-managed": "true"}, "ResourceType": "placement-group"}
    assert ec2_groups.asked.count("CreatePlacementGroup") == 1
    # Both instances were launched into the group, in the cluster zone, and EC2 has them there.
    assert len(ec2_groups.launches) == 2
    for body, _ in ec2_groups.launches:
        assert (body["Placement.GroupName"], body["Placement.AvailabilityZone"]) == (fleet.placement_group, zone)
    launched = {i for _, ids in ec2_groups.launches for i in ids}
    assert launched == {i.provider_instance_id for i in instances}
    reservations = moto_server.ec2().describe_instances(InstanceIds=sorted(launched))["Reservations"]
    assert {i["Placement"]["AvailabilityZone"] for r in reservations for i in r["Instances"]} == {zone}

    # The group is idempotent by name, and cannot go while instances are in it (InvalidPlacementGroup.InUse).
    driver = get_driver(cloud)
    assert driver.create_placement_group(region="us-east-1", name=fleet.placement_group) == fleet.placement_group
    with pytest.raises(TransientError, match="still in use"):
        driver.delete_placement_group(region="us-east-1", name=fleet.placement_group)
    assert list(ec2_groups.groups) == [fleet.placement_group]

    # Deleting the fleet terminates the instances in EC2, then deletes the group.
    assert api.delete(f"{P}/fleets/mpi/").json()["status"] == "terminating"
    reconcile()
    fleet.refresh_from_db()
    assert (fleet.status, fleet.placement_group) == ("terminated", "")
    reservations = moto_server.ec2().describe_instances(InstanceIds=sorted(launched))["Reservations"]
    assert {i["State"]["Name"] for r in reservations for i in r["Instances"]} == {"terminated"}
    assert ec2_groups.groups == {}
    # A group already gone is no error (a retried delete).
    driver.delete_placement_group(region="us-east-1", name="stackyard-main-mpi-gone")
