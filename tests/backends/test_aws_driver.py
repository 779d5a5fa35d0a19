"""The aws driver against a moto server on loopback (real HTTP): config, access check, offers and their
cache, instances, EBS volumes, workloads through SSM Run Command, tagged resources, error mapping; and the
price catalogue command."""

import http.server
import json
import subprocess
import threading

import pytest
from django.core.management import CommandError, call_command

from backends.drivers import aws as aws_module
from backends.drivers import aws_calls, aws_offers
from backends.drivers.aws import AwsDriver
from backends.drivers.aws_config import validate_config, validate_credentials
from backends.drivers.aws_jobs import PROBES_UNSUPPORTED, job_script
from backends.drivers.base import (
    FatalError,
    JobLaunch,
    NoCapacityError,
    NotFoundError,
    TransientError,
    managed_tags,
)
from backends.drivers.registry import driver_class, get_driver
from backends.models import Backend
from core.errors import InvalidInput
from projects.models import Project
from tests.moto_server import answer_ssm, moto_server  # noqa: F401  (the fixture)

pytestmark = pytest.mark.django_db

REGIONS = ("us-east-1", "eu-west-1")


@pytest.fixture
def backend(moto_server):  # noqa: F811
    project = Project.objects.create(name="p")
    backend = Backend(project=project, name="aws", type="aws", config=moto_server.config(REGIONS))
    backend.credentials = moto_server.credentials()
    backend.save()
    return backend


@pytest.fixture
def driver(backend):
    return get_driver(backend)


@pytest.fixture
def calls(monkeypatch):
    """The EC2 operations every client the driver makes sends to the server, in order."""
    sent: list[str] = []
    make_client = aws_calls.make_client

    def watched(*args, **kwargs):
        client = make_client(*args, **kwargs)
        client.meta.events.register("before-send", lambda request, **_: sent.append(request.url))
        client.meta.events.register("before-call", lambda model, **_: sent.append(model.name))
        return client

    monkeypatch.setattr(aws_calls, "make_client", watched)
    return sent


def operations(sent: list[str]) -> list[str]:
    return [entry for entry in sent if not entry.startswith("http")]


def fail_with(monkeypatch, operation: str, code: str) -> None:
    """Clients made from now on answer ``operation`` with the AWS error ``code`` (moto cannot produce it)."""
    make_client = aws_calls.make_client

    class Http:
        status_code = 400

    def short_circuit(**_):
        return Http(), {"Error": {"Code": code, "Message": f"{code} (injected)"},
                        "ResponseMetadata": {"HTTPStatusCode": 400}}

    def failing(*args, **kwargs):
        client = make_client(*args, **kwargs)
        client.meta.events.register(f"before-call.ec2.{operation}", short_circuit)
        return client

    monkeypatch.setattr(aws_calls, "make_client", failing)


def offer(driver, itype="m5.large", zone="us-east-1a", spot=False):
    return next(o for o in driver.offers()
                if (o.instance_type, o.availability_zone, o.spot) == (itype, zone, spot))


def launch(driver, name="vm-0", zone="us-east-1a", token="", spot=False, itype="m5.large") -> str:
    return driver.create_instance(name=name, offer=offer(driver, itype, zone, spot),
                                  tags=managed_tags(project="p", fleet="f", instance=name), client_token=token)


def described(moto, instance_id, region="us-east-1") -> dict:
    return moto.ec2(region).describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]


def volume_of(moto, volume_id, region="us-east-1") -> dict:
    return moto.ec2(region).describe_volumes(VolumeIds=[volume_id])["Volumes"][0]


def tags_of(resource: dict) -> dict:
    return {tag["Key"]: tag["Value"] for tag in resource.get("Tags", [])}


# --- config, credentials, access --------------------------------------------------------------------


def test_the_registry_serves_aws_backends():
    assert driver_class("aws") is AwsDriver


@pytest.mark.parametrize(("config", "field"), [
    ({}, "regions"),
    ({"regions": []}, "regions"),
    ({"regions": ["mars"]}, "regions[0]"),
    ({"regions": ["us-east-1", "us-east-1"]}, "regions"),
    ({"regions": ["us-east-1"], "zones": ["a"]}, "zones"),
    ({"regions": ["us-east-1"], "endpoint_url": "localhost:5000"}, "endpoint_url"),
    ({"regions": ["us-east-1"], "vpc_name": "a", "subnet_ids": ["subnet-12345678"]}, "subnet_ids"),
    ({"regions": ["us-east-1"], "subnet_ids": ["sn-1"]}, "subnet_ids[0]"),
    ({"regions": ["us-east-1"], "public_ips": "yes"}, "public_ips"),
    ({"regions": ["us-east-1"], "ami_id": {"eu-west-1": "ami-12345678"}}, "ami_id.eu-west-1"),
    ({"regions": ["us-east-1"], "disk_gb": 4}, "disk_gb"),
    ({"regions": ["us-east-1"], "instance_profile": "arn:aws:iam::12:role/x"}, "instance_profile"),
])
def test_a_bad_config_names_its_key(config, field):
    with pytest.raises(InvalidInput) as err:
        validate_config(config)
    assert err.value.extra["field"] == field


def test_a_good_config_is_kept_as_given():
    config = {"regions": ["us-east-1"], "endpoint_url": "http://127.0.0.1:5000", "subnet_ids": ["subnet-0123abcd"],
              "public_ips": False, "ami_id": {"us-east-1": "ami-0123abcd"}, "disk_gb": 200, "terminate_orphans": True,
              "instance_profile": "arn:aws:iam::123456789012:instance-profile/stackyard-ssm"}
    assert validate_config(config) == config


@pytest.mark.parametrize(("credentials", "field"), [
    ({}, "credentials.type"),
    ({"type": "key"}, "credentials.type"),
    ({"type": "access_key", "access_key": "AKIA1"}, "credentials.secret_key"),
    ({"type": "access_key", "access_key": "", "secret_key": "s"}, "credentials.access_key"),
    ({"type": "default", "access_key": "AKIA1"}, "credentials.access_key"),
])
def test_bad_credentials_name_their_key(credentials, field):
    with pytest.raises(InvalidInput) as err:
        validate_credentials(credentials)
    assert (err.value.code, err.value.extra["field"]) == ("invalid_credentials", field)


def test_credentials_are_normalized():
    assert validate_credentials({"type": "default"}) == {"type": "default"}
    keys = {"type": "access_key", "access_key": " AKIA1 ", "secret_key": "s"}
    assert validate_credentials(keys) == {"type": "access_key", "access_key": "AKIA1", "secret_key": "s"}


def test_access_check_passes_with_good_credentials_and_regions(driver):
    driver.check_access()


def test_access_check_names_an_unknown_region(backend):
    backend.config = {**backend.config, "regions": ["us-east-1", "eu-nowhere-1"]}
    with pytest.raises(FatalError, match="unknown AWS region.*eu-nowhere-1"):
        AwsDriver(backend).check_access()


def test_access_check_refuses_credentials_aws_does_not_know(driver, moto_server):  # noqa: F811
    moto_server.require_auth()
    with pytest.raises(FatalError, match="refused the credentials.*AuthFailure"):
        driver.check_access()


def test_the_default_credential_chain_is_boto3s(backend, monkeypatch, moto_server):  # noqa: F811
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFROMENVIRONMENT0")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-the-environment")
    backend.credentials = {"type": "default"}
    AwsDriver(backend).check_access()


def test_stored_credentials_that_are_invalid_surface_as_fatal(backend):
    backend.credentials = {"type": "access_key"}
    with pytest.raises(FatalError, match="invalid credentials"):
        AwsDriver(backend)


# --- offers -----------------------------------------------------------------------------------------


def test_offers_come_from_ec2_shapes_zones_and_the_shipped_prices(driver):
    offers = driver.offers()
    g5 = offer(driver, "g5.xlarge", "us-east-1b")
    assert g5.resources["cpus"] == 4 and g5.resources["memory_mib"] == 16384
    assert [gpu["name"] for gpu in g5.resources["gpus"]] == ["A10G"] and g5.resources["gpus"][0]["memory_mib"] > 20000
    assert g5.price == aws_offers.load_catalogue()["regions"]["us-east-1"]["g5.xlarge"]
    assert len(offer(driver, "p4d.24xlarge", "us-east-1a").resources["gpus"]) == 8
    cpu = offer(driver, "m5.large", "eu-west-1a")
    assert (cpu.resources["gpus"], cpu.resources["disk_gb"], cpu.price) == ([], 100, 0.107)
    # Zones are EC2's: p4d is not offered in us-east-1f; g6 is not priced (nor offered) in eu-west-1.
    places = {(o.instance_type, o.availability_zone) for o in offers}
    assert ("g5.xlarge", "us-east-1f") in places and ("p4d.24xlarge", "us-east-1f") not in places
    assert not [o for o in offers if o.instance_type == "g6.xlarge" and o.region == "eu-west-1"]
    spot = [o for o in offers if o.spot]
    assert spot and {o.region for o in spot} == set(REGIONS)


def test_offers_are_cached_per_backend(driver, backend, calls):
    first = driver.offers()
    assert "DescribeInstanceTypes" in operations(calls)
    calls.clear()
    again = get_driver(Backend.objects.get(pk=backend.pk))  # a new driver, as every reconcile pass makes
    assert again.offers() == first
    assert calls == []  # not a single request
    backend.config = {**backend.config, "disk_gb": 200}  # a changed backend never reads the old entry
    assert offer(AwsDriver(backend)).resources["disk_gb"] == 200
    assert "DescribeInstanceTypes" in operations(calls)


def test_locations_are_ec2_zones(driver):
    zones = driver.locations()
    assert zones["eu-west-1"] == ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
    assert "us-east-1a" in zones["us-east-1"]


def test_a_vpc_config_offers_only_the_zones_with_a_subnet(backend, moto_server):  # noqa: F811
    ec2 = moto_server.ec2()
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    ec2.create_tags(Resources=[vpc], Tags=[{"Key": "Name", "Value": "gpu-vpc"}])
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.9.1.0/24", AvailabilityZone="us-east-1c")["Subnet"]
    backend.config = moto_server.config(vpc_name="gpu-vpc", public_ips=False)
    driver = AwsDriver(backend)
    assert {o.availability_zone for o in driver.offers()} == {"us-east-1c"}
    instance_id = launch(driver, zone="us-east-1c")
    assert described(moto_server, instance_id)["SubnetId"] == subnet["SubnetId"]


# --- instances --------------------------------------------------------------------------------------


def test_an_instance_is_tagged_and_a_retried_create_finds_it_by_its_token(driver, moto_server):  # noqa: F811
    first = launch(driver, name="vm-0", zone="us-east-1b", token="stackyard-instance-7")
    assert launch(driver, name="vm-0", zone="us-east-1b", token="stackyard-instance-7") == first
    instance = described(moto_server, first)
    assert (instance["InstanceType"], instance["Placement"]["AvailabilityZone"]) == ("m5.large", "us-east-1b")
    assert tags_of(instance) == {**managed_tags(project="p", fleet="f", instance="vm-0"), "Name": "vm-0",
                                 "stackyard-client-token": "stackyard-instance-7"}
    assert instance.get("ClientToken") == "stackyard-instance-7"
    reservations = moto_server.ec2().describe_instances()["Reservations"]
    assert sum(len(r["Instances"]) for r in reservations) == 1
    assert driver.find_instance(client_token="stackyard-instance-7") == first
    assert driver.find_instance(client_token="stackyard-instance-8") is None


def test_a_spot_offer_launches_a_spot_instance(driver, moto_server):  # noqa: F811
    instance_id = launch(driver, spot=True)
    assert described(moto_server, instance_id).get("InstanceLifecycle") == "spot"


def test_instance_states_ask_each_region_once_for_many_instances(driver, calls):
    east = [launch(driver, name=f"vm-{i}", token=f"t-{i}") for i in range(3)]
    west = launch(driver, name="vm-w", zone="eu-west-1a", token="t-w")
    aws_module.clear_caches()  # a fresh worker that remembers no region
    calls.clear()
    states = driver.instance_states(instance_ids=[*east, west, "i-0123456789abcdef0"])
    assert [states[i] for i in [*east, west]] == ["running"] * 4
    assert isinstance(states["i-0123456789abcdef0"], NotFoundError)
    assert operations(calls).count("DescribeInstances") == 2  # one per region, not one per instance
    calls.clear()
    assert driver.instance_state(instance_id=west) == "running"
    assert operations(calls) == ["DescribeInstances"]  # its region is remembered now


def test_an_instance_terminated_or_stopped_behind_our_back_is_interrupted(driver, moto_server):  # noqa: F811
    gone, stopped, alive = (launch(driver, name=f"vm-{i}", token=f"t-{i}") for i in range(3))
    moto_server.ec2().terminate_instances(InstanceIds=[gone])
    moto_server.ec2().stop_instances(InstanceIds=[stopped])
    states = driver.instance_states(instance_ids=[gone, stopped, alive])
    assert states == {gone: "interrupted", stopped: "interrupted", alive: "running"}


def test_terminate_is_a_no_op_the_second_time_and_unknown_ids_are_not_found(driver, moto_server):  # noqa: F811
    instance_id = launch(driver, zone="eu-west-1b")
    aws_module.clear_caches()  # found by asking the regions
    driver.terminate_instance(instance_id=instance_id)
    driver.terminate_instance(instance_id=instance_id)
    assert described(moto_server, instance_id, "eu-west-1")["State"]["Name"] == "terminated"
    with pytest.raises(NotFoundError):
        driver.terminate_instance(instance_id="i-0123456789abcdef0")


@pytest.mark.parametrize(("code", "error"), [
    ("InsufficientInstanceCapacity", NoCapacityError),
    ("InsufficientHostCapacity", NoCapacityError),
    ("VcpuLimitExceeded", NoCapacityError),
    ("RequestLimitExceeded", TransientError),
    ("Throttling", TransientError),
    ("InvalidParameterValue", FatalError),
    ("UnauthorizedOperation", FatalError),
])
def test_aws_errors_of_a_create_are_typed(driver, monkeypatch, code, error):
    driver.offers()  # cached before the failure is injected
    fail_with(monkeypatch, "RunInstances", code)
    with pytest.raises(error, match=code):
        launch(AwsDriver(driver.backend))


def test_an_unreachable_endpoint_is_transient(backend):
    backend.config = {**backend.config, "endpoint_url": "http://127.0.0.1:9"}
    with pytest.raises(TransientError, match="could not be reached"):
        AwsDriver(backend).check_access()


# --- volumes ----------------------------------------------------------------------------------------


def create_volume(driver, name="data", zone="us-east-1a", token="", region="us-east-1"):
    return driver.create_volume(name=name, region=region, availability_zone=zone, size_gb=20,
                                tags=managed_tags(project="p", volume=name), client_token=token)


def attach(driver, volume_id, instance_id) -> str:
    """Attach as the attach loop does: ask again while AWS says ``attaching``."""
    for _ in range(5):
        try:
            return driver.attach_volume(volume_id=volume_id, instance_id=instance_id, region="us-east-1")
        except TransientError:
            continue
    raise AssertionError("never attached")


def test_a_volume_is_created_in_its_zone_with_tags_and_found_by_its_token(driver, moto_server):  # noqa: F811
    info = create_volume(driver, token="stackyard-volume-3")
    assert (info.region, info.availability_zone, info.size_gb, info.status) == ("us-east-1", "us-east-1a", 20,
                                                                                 "available")
    assert create_volume(driver, token="stackyard-volume-3") == info
    assert len(moto_server.ec2().describe_volumes()["Volumes"]) == 1
    assert tags_of(volume_of(moto_server, info.volume_id))["stackyard-volume"] == "data"
    assert driver.find_volume(client_token="stackyard-volume-3") == info
    assert driver.find_volume(client_token="stackyard-volume-4") is None
    # No zone: the region's first; a zone of another region: refused before asking AWS.
    assert create_volume(driver, name="b", zone=None).availability_zone == "us-east-1a"
    with pytest.raises(FatalError, match="not in region"):
        create_volume(driver, name="c", zone="eu-west-1a")


def test_an_external_volume_is_registered_with_its_zone_and_size(driver, moto_server):  # noqa: F811
    volume_id = moto_server.ec2("eu-west-1").create_volume(AvailabilityZone="eu-west-1c", Size=42)["VolumeId"]
    info = driver.register_volume(volume_id=volume_id, region="eu-west-1")
    assert (info.availability_zone, info.size_gb) == ("eu-west-1c", 42)
    with pytest.raises(NotFoundError):
        driver.register_volume(volume_id=volume_id, region="us-east-1")
    with pytest.raises(FatalError, match="not one of this backend's regions"):
        driver.register_volume(volume_id=volume_id, region="ap-south-1")


def test_attach_picks_free_devices_and_detach_is_confirmed_by_describe_volumes(driver, moto_server):  # noqa: F811
    instance_id = launch(driver)
    data, logs = create_volume(driver).volume_id, create_volume(driver, name="logs").volume_id
    assert attach(driver, data, instance_id) == "/dev/sdf"
    assert attach(driver, logs, instance_id) == "/dev/sdg"
    assert attach(driver, data, instance_id) == "/dev/sdf"  # a retried attach answers the same device
    attachment = volume_of(moto_server, data)["Attachments"][0]
    assert (attachment["InstanceId"], attachment["State"]) == (instance_id, "attached")
    assert driver.is_volume_detached(volume_id=data, instance_id=instance_id, region="us-east-1") is False
    with pytest.raises(FatalError, match="detach it first"):
        driver.delete_volume(volume_id=data, region="us-east-1")
    driver.detach_volume(volume_id=data, instance_id=instance_id, force=False, region="us-east-1")
    assert driver.is_volume_detached(volume_id=data, instance_id=instance_id, region="us-east-1") is True
    assert volume_of(moto_server, data)["Attachments"] == []
    driver.detach_volume(volume_id=data, instance_id=instance_id, force=False, region="us-east-1")  # no-op
    driver.detach_volume(volume_id=logs, instance_id=instance_id, force=True, region="us-east-1")
    assert driver.is_volume_detached(volume_id=logs, instance_id=instance_id, region="us-east-1") is True
    # Deleted (without a region, as the orphan finder asks), and deleting again is a no-op.
    aws_module.clear_caches()
    driver.delete_volume(volume_id=data)
    driver.delete_volume(volume_id=data)
    assert [v["VolumeId"] for v in moto_server.ec2().describe_volumes()["Volumes"]
            if v["VolumeId"] in (data, logs)] == [logs]


def test_a_volume_attached_elsewhere_is_refused(driver):
    first, second = launch(driver, name="a", token="a"), launch(driver, name="b", token="b")
    volume_id = create_volume(driver).volume_id
    attach(driver, volume_id, first)
    with pytest.raises(FatalError, match=f"already attached to {first}"):
        driver.attach_volume(volume_id=volume_id, instance_id=second, region="us-east-1")


def test_a_cross_zone_attach_is_never_asked(driver, moto_server, calls):  # noqa: F811
    instance_id = launch(driver, zone="us-east-1b")
    volume_id = create_volume(driver, zone="us-east-1a").volume_id
    with pytest.raises(FatalError, match="only in their own zone"):
        driver.attach_volume(volume_id=volume_id, instance_id=instance_id, region="us-east-1")
    with pytest.raises(FatalError, match="not in us-east-1b"):
        driver.attach_volume(volume_id=volume_id, instance_id=instance_id, region="us-east-1",
                             availability_zone="us-east-1b")
    assert "AttachVolume" not in operations(calls)
    assert volume_of(moto_server, volume_id)["Attachments"] == []


def test_detach_of_an_unknown_volume_is_not_taken_for_detached(driver):
    with pytest.raises(NotFoundError):
        driver.is_volume_detached(volume_id="vol-0123456789abcdef0", instance_id="i-0123456789abcdef0",
                                  region="us-east-1")


# --- workloads (SSM Run Command) -------------------------------------------------------------------
# moto's SSM (server mode) stores what SendCommand sends and answers ListCommands (by id or instance, its
# Filters ignored) and GetCommandInvocation, where every command has already succeeded (exit 0, no
# output); it checks neither that the instance exists nor that SSM manages it, and has no CancelCommand
# or ListCommandInvocations. What it cannot answer (a command still running, a failure, output, an
# unmanaged instance) is injected with ``answer_ssm``, which records the calls it answers.


def job(instance_id, token="stackyard-job-1", **changes) -> JobLaunch:
    return JobLaunch(**{"job_name": "train-0-0", "instance_id": instance_id, "commands": ["echo one", "echo two"],
                        "env": {}, "client_token": token, **changes})


def start(driver, launch: JobLaunch) -> str:
    [answer] = driver.start_jobs(jobs=[launch])
    if isinstance(answer, Exception):
        raise answer
    return answer


def sent_command(moto, workload_id) -> dict:
    return moto.ssm().list_commands(CommandId=workload_id.split("/")[1])["Commands"][0]


def test_a_job_is_an_ssm_command_with_its_env_mounts_and_commands_in_order(driver, moto_server):  # noqa: F811
    instance_id = launch(driver)
    volume_id = create_volume(driver).volume_id
    device = attach(driver, volume_id, instance_id)
    mounts = [{"path": "/data", "volume_id": volume_id, "device_name": device},
              {"path": "/cache", "instance_path": "/mnt/cache"}]
    env = {"LR": "0.1", "NOTE": "it's $HOME; rm -rf /", "EMPTY": None}
    workload_id = start(driver, job(instance_id, env=env, mounts=mounts, commands=["pip install -r req.txt",
                                                                                   "python train.py"]))
    assert workload_id.startswith(f"{instance_id}/")
    command = sent_command(moto_server, workload_id)
    assert command["DocumentName"] == "AWS-RunShellScript"
    assert command["Comment"] == "stackyard stackyard-job-1 train-0-0"
    assert command["Parameters"]["executionTimeout"] == ["172800"]
    script = command["Parameters"]["commands"]
    assert script == job_script(job(instance_id, env=env, mounts=mounts, commands=["pip install -r req.txt",
                                                                                   "python train.py"]))
    body = script[script.index("export LR=0.1"):]
    assert body == [
        "export LR=0.1", "export NOTE='it'\"'\"'s $HOME; rm -rf /'", "export EMPTY=''",
        f"stackyard_mount /dev/sdf {volume_id} /data", "trap 'umount /data' EXIT",
        "mkdir -p /mnt/cache / && ln -sfT /mnt/cache /cache || stackyard_fail 'could not link /cache to /mnt/cache'",
        "set -e", "pip install -r req.txt", "python train.py"]
    assert subprocess.run(["sh", "-n", "-c", "\n".join(script)], capture_output=True).returncode == 0


def test_the_script_runs_as_written_under_a_posix_shell(tmp_path):
    """The script without network volumes, run by ``sh`` here: quoting, links, order and ``set -e``."""
    cache, link = tmp_path / "host" / "cache", tmp_path / "job" / "cache"
    script = job_script(job("i-0123456789abcdef0", env={"NOTE": "it's $HOME; `x`", "N": 3},
                            mounts=[{"path": str(link), "instance_path": str(cache)}],
                            commands=['echo "$NOTE|$N"', f"echo hi > {link}/out", "false", "echo never"]))
    done = subprocess.run(["sh", "-c", "\n".join(script)], capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout) == (1, "it's $HOME; `x`|3\n")
    assert (cache / "out").read_text() == "hi\n" and link.is_symlink()


def test_a_job_polls_done_as_moto_reports_it_and_its_logs_are_read(driver):
    instance_id = launch(driver)
    first, second = start(driver, job(instance_id)), start(driver, job(instance_id, token="stackyard-job-2"))
    states = driver.poll_jobs(workload_ids=[first, second])
    assert [(states[w].status, states[w].exit_status, states[w].failure) for w in (first, second)] == [
        ("done", 0, ""), ("done", 0, "")]
    assert driver.job_logs(workload_id=first) == []  # moto's commands write nothing


def test_a_retried_start_answers_the_first_command(driver, moto_server):  # noqa: F811
    instance_id = launch(driver)
    first = start(driver, job(instance_id))
    assert start(driver, job(instance_id)) == first
    other = start(driver, job(instance_id, token="stackyard-job-2"))
    assert other != first
    comments = [c["Comment"] for c in moto_server.ssm().list_commands(InstanceId=instance_id)["Commands"]]
    assert sorted(comments) == ["stackyard stackyard-job-1 train-0-0", "stackyard stackyard-job-2 train-0-0"]


def test_stopping_a_finished_command_asks_nothing_and_a_running_one_is_cancelled(driver, monkeypatch, calls):
    instance_id = launch(driver)
    workload_id = start(driver, job(instance_id))
    calls.clear()
    assert driver.stop_jobs(workload_ids=[workload_id]) == {workload_id: None}
    assert "CancelCommand" not in operations(calls)
    asked = answer_ssm(monkeypatch, GetCommandInvocation={"Status": "InProgress", "ResponseCode": -1},
                        CancelCommand={})
    driver = AwsDriver(driver.backend)
    assert driver.poll_job(workload_id=workload_id).status == "running"
    driver.stop_job(workload_id=workload_id)
    assert asked[-1] == ("CancelCommand", {"CommandId": workload_id.split("/")[1], "InstanceIds": [instance_id]})


@pytest.mark.parametrize(("invocation", "expected"), [
    ({"Status": "Failed", "StatusDetails": "Failed", "ResponseCode": 3, "StandardErrorContent": "x\nOOM\n"},
     ("failed", 3, "exited with status 3: OOM", "error")),
    ({"Status": "Cancelled", "StatusDetails": "Cancelled", "ResponseCode": -1},
     ("stopped", None, "the SSM command was cancelled", "")),
    ({"Status": "TimedOut", "StatusDetails": "ExecutionTimedOut", "ResponseCode": -1},
     ("failed", None, "killed at SSM's execution timeout (48 h)", "error")),
    ({"Status": "Failed", "StatusDetails": "Undeliverable", "ResponseCode": -1},
     ("failed", None, "SSM could not run it (Failed: Undeliverable)", "error")),
])
def test_how_ssm_says_a_command_ended_is_the_jobs_end(driver, monkeypatch, invocation, expected):
    instance_id = launch(driver)
    workload_id = start(driver, job(instance_id))
    answer_ssm(monkeypatch, GetCommandInvocation=invocation)
    state = AwsDriver(driver.backend).poll_job(workload_id=workload_id)
    assert (state.status, state.exit_status, state.message, state.failure) == expected


def test_a_command_whose_instance_is_gone_is_an_interruption(driver, moto_server, monkeypatch):  # noqa: F811
    instance_id = launch(driver)
    workload_id = start(driver, job(instance_id))
    moto_server.ec2().terminate_instances(InstanceIds=[instance_id])
    answer_ssm(monkeypatch, GetCommandInvocation="InvocationDoesNotExist")
    state = AwsDriver(driver.backend).poll_job(workload_id=workload_id)
    assert (state.status, state.failure) == ("failed", "interruption"), state
    assert "is gone" in state.message


def test_a_missing_invocation_on_a_live_instance_is_asked_again(driver, monkeypatch):
    instance_id = launch(driver)
    workload_id = start(driver, job(instance_id))
    answer_ssm(monkeypatch, GetCommandInvocation="InvocationDoesNotExist")
    with pytest.raises(TransientError, match="does not list"):
        AwsDriver(driver.backend).poll_job(workload_id=workload_id)


def test_logs_are_stdout_then_stderr_with_tail_and_say_when_ssm_cut_them(driver, monkeypatch):
    instance_id = launch(driver)
    workload_id = start(driver, job(instance_id))
    invocation = {"Status": "Success", "ResponseCode": 0, "StandardOutputContent": "a\nb\n",
                  "StandardErrorContent": "e\n"}
    answer_ssm(monkeypatch, GetCommandInvocation=invocation)  # read at each call: changed below
    driver = AwsDriver(driver.backend)
    assert driver.job_logs(workload_id=workload_id) == ["a", "b", "e"]
    assert driver.job_logs(workload_id=workload_id, tail=2) == ["b", "e"]
    invocation.update(StandardOutputContent="x" * 24000, StandardErrorContent="")
    assert driver.job_logs(workload_id=workload_id)[-1] == ("[stackyard: SSM keeps only the first 24000 characters "
                                                            "of stdout; the rest is not shown]")
    with pytest.raises(NotFoundError):
        driver.job_logs(workload_id="w-1")


def test_a_start_is_refused_before_sending_for_probes_unattached_volumes_and_bad_env(driver, calls):
    instance_id = launch(driver)
    volume_id = create_volume(driver).volume_id
    with pytest.raises(FatalError, match=PROBES_UNSUPPORTED):
        start(driver, job(instance_id, probes=[{"type": "http", "url": "/health"}]))
    with pytest.raises(FatalError, match=f"volume {volume_id} is not attached to {instance_id}"):
        start(driver, job(instance_id, mounts=[{"path": "/data", "volume_id": volume_id, "device_name": "/dev/sdf"}]))
    with pytest.raises(FatalError, match="not a usable environment variable name"):
        start(driver, job(instance_id, env={"A-B": "1"}))
    assert "SendCommand" not in operations(calls)
    with pytest.raises(NotFoundError):
        driver.poll_job(workload_id="w-1")


def test_an_instance_ssm_does_not_manage_is_transient_while_it_registers(driver, monkeypatch):
    instance_id = launch(driver)
    answer_ssm(monkeypatch, SendCommand="InvalidInstanceId")
    with pytest.raises(TransientError, match="AmazonSSMManagedInstanceCore.*may still be registering"):
        start(AwsDriver(driver.backend), job(instance_id))


def test_instances_get_the_configured_instance_profile(backend, moto_server):  # noqa: F811
    moto_server.client("iam").create_instance_profile(InstanceProfileName="stackyard-ssm")
    backend.config = {**backend.config, "instance_profile": "stackyard-ssm"}
    instance_id = launch(AwsDriver(backend))
    assert described(moto_server, instance_id)["IamInstanceProfile"]["Arn"].endswith(":instance-profile/stackyard-ssm")


# --- tagged resources -------------------------------------------------------------------------------


def test_tagged_resources_are_the_live_managed_ones_in_every_region(driver, moto_server):  # noqa: F811
    east, west = launch(driver, name="vm-e", token="e"), launch(driver, name="vm-w", zone="eu-west-1b", token="w")
    gone = launch(driver, name="vm-gone", token="g")
    driver.terminate_instance(instance_id=gone)
    volume = create_volume(driver, region="eu-west-1", zone="eu-west-1a")
    ec2 = moto_server.ec2()
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    stranger = ec2.run_instances(ImageId=image, InstanceType="t3.large", MinCount=1, MaxCount=1)["Instances"][0]
    ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)  # untagged: someone else's
    resources = {r.provider_id: r for r in driver.list_tagged_resources()}
    assert set(resources) == {east, west, volume.volume_id}
    assert stranger["InstanceId"] not in resources
    assert (resources[west].kind, resources[west].name, resources[west].region,
            resources[west].availability_zone) == ("instance", "vm-w", "eu-west-1", "eu-west-1b")
    assert (resources[volume.volume_id].kind, resources[volume.volume_id].name) == ("volume", "data")
    assert resources[east].created_at is not None and resources[east].tags["stackyard-project"] == "p"


# --- the price catalogue ----------------------------------------------------------------------------


def test_the_shipped_catalogue_says_where_and_when_its_prices_come_from():
    catalogue = aws_offers.load_catalogue()
    assert catalogue["source"].startswith("AWS Price List") and catalogue["as_of"]
    assert all(price > 0 for prices in catalogue["regions"].values() for price in prices.values())


def test_refresh_keeps_the_catalogue_when_the_price_list_is_unreachable(tmp_path):
    output = tmp_path / "prices.json"
    output.write_text(aws_offers.PRICES_PATH.read_text())
    with pytest.raises(CommandError, match="not reachable.*Nothing was changed.*as of 2024-12-01"):
        call_command("refresh_aws_prices", output=str(output), source="http://127.0.0.1:9/{region}.csv",
                     timeout=5)
    assert output.read_text() == aws_offers.PRICES_PATH.read_text()


PRICE_LIST = """\
"FormatVersion","v1.0"
"Publication Date","2026-11-02T18:00:00Z"
"OfferCode","AmazonEC2"
"SKU","TermType","Unit","PricePerUnit","Product Family","Instance Type","Operating System","Tenancy",\
"Pre Installed S/W","CapacityStatus","operation"
"A","OnDemand","Hrs","1.0060000000","Compute Instance","g5.xlarge","Linux","Shared","NA","Used","RunInstances"
"B","OnDemand","Hrs","1.5000000000","Compute Instance","g5.xlarge","Windows","Shared","NA","Used","RunInstances:0002"
"C","Reserved","Hrs","0.6000000000","Compute Instance","g5.xlarge","Linux","Shared","NA","Used","RunInstances"
"D","OnDemand","Hrs","2.0000000000","Compute Instance","g5.xlarge","Linux","Dedicated","NA","Used","RunInstances"
"E","OnDemand","Hrs","0.0960000000","Compute Instance","m5.large","Linux","Shared","NA","Used","RunInstances"
"F","OnDemand","Hrs","0.0000000000","Compute Instance","m5.large","Linux","Shared","NA","AllocatedCapacityReservation",\
"RunInstances"
"""


@pytest.fixture
def price_list_server():
    """AWS's price list format, served over HTTP on loopback (the real one is hundreds of MB a region)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            body = PRICE_LIST.encode() if self.path == "/us-east-1/index.csv" else b""
            self.send_response(200 if body else 404)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{{region}}/index.csv"
    server.shutdown()


def test_refresh_writes_the_on_demand_linux_prices_with_their_date(tmp_path, price_list_server):
    output = tmp_path / "prices.json"
    call_command("refresh_aws_prices", output=str(output), source=price_list_server, regions="us-east-1",
                 types="g5.xlarge,m5.large,p5.48xlarge")
    written = json.loads(output.read_text())
    assert written["regions"] == {"us-east-1": {"g5.xlarge": 1.006, "m5.large": 0.096}}
    assert written["as_of"] == "2026-11-02" and price_list_server in written["source"]
    with pytest.raises(CommandError, match="not reachable or not readable.*404"):
        call_command("refresh_aws_prices", output=str(output), source=price_list_server, regions="eu-west-1")
    assert json.loads(output.read_text()) == written
