"""The aws backend end to end through the API, against a moto server on loopback (real HTTP): backend ->
fleet -> instance idle (seen in describe_instances with its tags) -> volume active -> a task mounting it
runs through SSM with the volume attached (seen in describe_volumes and in the command sent) -> stop ->
detached -> fleet deleted -> instance terminated in AWS; orphans, an interruption behind Stackyard's
back, and the 400s of bad credentials and regions.

Runs on whatever database the pass uses (SQLite or PostgreSQL); the reconcilers are driven by hand.
"""

import pytest

from backends.models import Backend
from core.models import Event
from fleets.models import Instance
from runs.models import Job
from tests.moto_server import answer_ssm, moto_server  # noqa: F401  (the fixture)
from volumes.models import Volume, VolumeAttachment

pytestmark = pytest.mark.django_db

P = "/api/v1/projects/main"
FLEET = "type: fleet\nname: cpu\nnodes: 1\nbackends: [cloud]\nresources: {cpu: 2, gpu: 0}\n"


def create_backend(api, moto, expect=201, **changes) -> dict:
    body = {"name": "cloud", "type": "aws", "config": moto.config(), "credentials": moto.credentials(), **changes}
    response = api.post(f"{P}/backends/", body, format="json")
    assert response.status_code == expect, response.content
    return response.json()


@pytest.fixture
def cloud(api, moto_server):  # noqa: F811
    """An aws backend named ``cloud`` on the moto server, created through the API."""
    body = create_backend(api, moto_server)
    assert body["has_credentials"] is True and "credentials" not in body
    return moto_server


@pytest.fixture
def instance(cloud, api, apply, reconcile) -> dict:
    """The one instance of the fleet ``cpu``, once it is up."""
    apply(FLEET)
    reconcile()
    instances = api.get(f"{P}/instances/", {"fleet": "cpu"}).json()["results"]
    assert [(i["status"], i["backend"]) for i in instances] == [("idle", "cloud")], instances
    return instances[0]


def aws_instance(moto, name: str) -> dict:
    """The EC2 instance Stackyard made for instance ``name``, found by its tag as an operator would."""
    reservations = moto.ec2().describe_instances(
        Filters=[{"Name": "tag:stackyard-instance", "Values": [name]}])["Reservations"]
    found = [i for r in reservations for i in r["Instances"]]
    assert len(found) == 1, found
    return found[0]


def aws_volume(moto, volume_id: str) -> dict:
    return moto.ec2().describe_volumes(VolumeIds=[volume_id])["Volumes"][0]


def tags_of(resource: dict) -> dict:
    return {tag["Key"]: tag["Value"] for tag in resource.get("Tags", [])}


def volume_in(apply, reconcile, api, zone: str) -> dict:
    apply(f"type: volume\nname: data\nbackend: cloud\nregion: us-east-1\navailability_zone: {zone}\nsize: 10GB\n")
    reconcile()
    volume = api.get(f"{P}/volumes/data/").json()
    assert (volume["status"], volume["availability_zone"], volume["size_gb"]) == ("active", zone, 10), volume
    return volume


def test_fleet_instance_volume_attach_detach_and_delete_against_aws(cloud, instance, api, apply, reconcile):
    vm = aws_instance(cloud, instance["name"])
    assert vm["State"]["Name"] == "running"
    assert (vm["InstanceType"], vm["Placement"]["AvailabilityZone"]) == (instance["instance_type"],
                                                                         instance["availability_zone"])
    assert tags_of(vm)["stackyard-managed"] == "true"
    assert (tags_of(vm)["stackyard-project"], tags_of(vm)["stackyard-fleet"]) == ("main", "cpu")

    volume = volume_in(apply, reconcile, api, instance["availability_zone"])
    assert tags_of(aws_volume(cloud, volume["volume_id"]))["stackyard-volume"] == "data"

    # An attachment made the way a job's placement makes it (an ``attaching`` row), with no job, and let
    # go through the API's force-detach (a task's own attach and detach are the tests below).
    VolumeAttachment.objects.create(volume=Volume.objects.get(name="data"),
                                    instance=Instance.objects.get(name=instance["name"]))
    reconcile()
    attachment = api.get(f"{P}/volumes/data/").json()["attachments"][0]
    assert (attachment["status"], attachment["device_name"]) == ("attached", "/dev/sdf"), attachment
    attached = aws_volume(cloud, volume["volume_id"])["Attachments"]
    assert [(a["InstanceId"], a["State"], a["Device"]) for a in attached] == [(vm["InstanceId"], "attached",
                                                                               "/dev/sdf")]
    assert api.post(f"{P}/volumes/data/force-detach/").status_code in (200, 202)
    reconcile()
    attachment = api.get(f"{P}/volumes/data/").json()["attachments"][0]
    assert (attachment["status"], attachment["force"]) == ("detached", True), attachment
    assert aws_volume(cloud, volume["volume_id"])["Attachments"] == []

    assert api.delete(f"{P}/fleets/cpu/").status_code in (202, 204)
    reconcile()
    gone = api.get(f"{P}/instances/", {"fleet": "cpu"}).json()["results"]
    assert [(i["status"], i["termination_reason"]) for i in gone] == [("terminated", "fleet_deleted")]
    assert aws_instance(cloud, instance["name"])["State"]["Name"] == "terminated"

    assert api.delete(f"{P}/volumes/data/").status_code in (200, 202, 204)
    reconcile()
    assert Volume.objects.get(name="data").status == "deleted"
    assert not cloud.ec2().describe_volumes(Filters=[{"Name": "volume-id", "Values": [volume["volume_id"]]}])[
        "Volumes"]


TASK = "type: task\nname: train\ncommands: [python train.py]\nresources: {cpu: 2, gpu: 0}\nvolumes: [data:/data]\n"


def sent_script(moto, job: Job) -> list[str]:
    """The script of the SSM command the job's workload is (read back from SSM)."""
    instance_id, command_id = job.workload_id.split("/")
    command = moto.ssm().list_commands(CommandId=command_id)["Commands"][0]
    # moto adds every instance of the region to a command sent without Targets: only membership is checked.
    assert instance_id in command["InstanceIds"], command
    return command["Parameters"]["commands"]


def volume_events(name: str) -> set:
    return set(Event.objects.filter(resource_type="volume", resource_name=name).values_list("kind", flat=True))


def test_a_task_mounting_a_volume_runs_through_ssm_and_its_volume_is_detached_when_it_ends(cloud, instance, api,
                                                                                          apply, reconcile):
    volume = volume_in(apply, reconcile, api, instance["availability_zone"])
    apply(TASK)
    reconcile()
    run = api.get(f"{P}/runs/train/").json()
    assert run["status"] == "done", run  # moto's SSM reports every command succeeded at once
    job = Job.objects.get(run__name="train")
    script = sent_script(cloud, job)
    assert f"stackyard_mount /dev/sdf {volume['volume_id']} /data" in script
    assert script[-2:] == ["set -e", "python train.py"] and "export DSTACK_RUN_NAME=train" in script
    assert {"attached", "detached"} <= volume_events("data")
    assert aws_volume(cloud, volume["volume_id"])["Attachments"] == []
    assert api.get(f"{P}/instances/{instance['name']}/").json()["status"] == "idle"


def test_backend_fleet_volume_task_running_stop_detach_and_delete(cloud, instance, api, apply, reconcile,
                                                                   monkeypatch):
    # moto's commands have always ended already and it has no CancelCommand: SSM answers that the
    # command runs (until it is cancelled), as it would for a long task.
    invocation = {"Status": "InProgress", "StatusDetails": "InProgress", "ResponseCode": -1}
    asked = answer_ssm(monkeypatch, GetCommandInvocation=invocation, CancelCommand={})
    vm = aws_instance(cloud, instance["name"])
    volume = volume_in(apply, reconcile, api, instance["availability_zone"])
    apply(TASK)
    reconcile()
    assert api.get(f"{P}/runs/train/").json()["status"] == "running"
    job = Job.objects.get(run__name="train")
    assert job.workload_id.startswith(f"{vm['InstanceId']}/")
    assert f"stackyard_mount /dev/sdf {volume['volume_id']} /data" in sent_script(cloud, job)
    attached = aws_volume(cloud, volume["volume_id"])["Attachments"]
    assert [(a["InstanceId"], a["State"]) for a in attached] == [(vm["InstanceId"], "attached")]

    assert api.post(f"{P}/runs/train/stop/", {}, format="json").status_code == 202
    reconcile()
    assert ("CancelCommand", {"CommandId": job.workload_id.split("/")[1], "InstanceIds": [vm["InstanceId"]]}) in asked
    run = api.get(f"{P}/runs/train/").json()
    assert run["status"] == "terminated", run
    assert aws_volume(cloud, volume["volume_id"])["Attachments"] == []
    assert {"attached", "detached"} <= volume_events("data")

    assert api.delete(f"{P}/fleets/cpu/").status_code in (202, 204)
    reconcile()
    assert aws_instance(cloud, instance["name"])["State"]["Name"] == "terminated"
    assert api.get(f"{P}/instances/{instance['name']}/").json()["status"] == "terminated"


def test_a_tagged_instance_no_row_owns_is_an_orphan(cloud, instance, api):
    ec2 = cloud.ec2()
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    tags = [{"Key": "stackyard-managed", "Value": "true"}, {"Key": "stackyard-project", "Value": "main"},
            {"Key": "stackyard-instance", "Value": "ghost"}]
    ghost = ec2.run_instances(ImageId=image, InstanceType="t3.large", MinCount=1, MaxCount=1,
                              TagSpecifications=[{"ResourceType": "instance", "Tags": tags}])["Instances"][0]
    response = api.get(f"{P}/backends/cloud/resources/")
    assert response.status_code == 200, response.content
    resources = {r["provider_id"]: r for r in response.json()}
    assert resources[ghost["InstanceId"]]["orphan"] is True
    assert resources[ghost["InstanceId"]]["name"] == "ghost"
    assert resources[aws_instance(cloud, instance["name"])["InstanceId"]]["orphan"] is False


def test_an_instance_terminated_behind_stackyards_back_is_an_interruption(cloud, instance, api, reconcile):
    cloud.ec2().terminate_instances(InstanceIds=[aws_instance(cloud, instance["name"])["InstanceId"]])
    reconcile()
    lost = api.get(f"{P}/instances/{instance['name']}/").json()
    assert (lost["status"], lost["termination_reason"]) == ("terminated", "interrupted"), lost
    # The fleet keeps its one node: a new instance replaces the lost one.
    statuses = {i["name"]: i["status"] for i in api.get(f"{P}/instances/", {"fleet": "cpu"}).json()["results"]}
    assert statuses.pop(instance["name"]) == "terminated" and list(statuses.values()) == ["idle"]


def test_bad_credentials_and_bad_regions_get_a_400_and_store_nothing(api, moto_server):  # noqa: F811
    moto_server.require_auth()  # moto's IAM knows no key from now on: AWS would answer AuthFailure
    refused = create_backend(api, moto_server, expect=400)
    assert refused["code"] == "access_check_failed" and "AuthFailure" in refused["detail"], refused
    moto_server.reset()
    unknown = create_backend(api, moto_server, expect=400, config=moto_server.config(["us-east-1", "eu-nowhere-1"]))
    assert unknown["code"] == "access_check_failed" and "eu-nowhere-1" in unknown["detail"], unknown
    misspelt = create_backend(api, moto_server, expect=400, config=moto_server.config(["useast1"]))
    assert (misspelt["code"], misspelt["field"]) == ("invalid_config", "regions[0]"), misspelt
    partial = create_backend(api, moto_server, expect=400, credentials={"type": "access_key", "access_key": "AKIA1"})
    assert (partial["code"], partial["field"]) == ("invalid_credentials", "credentials.secret_key"), partial
    assert api.get(f"{P}/backends/").json()["results"] == []


def test_an_update_with_refused_credentials_keeps_the_stored_ones(cloud, api):
    cloud.require_auth()
    response = api.patch(f"{P}/backends/cloud/", {"credentials": {"type": "access_key", "access_key": "AKIAOTHER",
                                                                  "secret_key": "x"}}, format="json")
    assert response.status_code == 400 and response.json()["code"] == "access_check_failed", response.content
    assert Backend.objects.get(name="cloud").credentials == cloud.credentials()
