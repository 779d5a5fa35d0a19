"""The ``aws`` driver: EC2 instances, EBS volumes and (through SSM Run Command) workloads, with boto3.

Its offers and zones come from the ``AwsOffers`` mixin (``aws_offers``), its volume calls from the
``AwsVolumes`` mixin (``aws_volumes``), its clients and error mapping from ``aws_calls``, and its
config from ``aws_config``; each module's docstring states its guarantees. Beyond the interface:

* ``check_access`` is one ``describe_regions`` call: it proves the credentials work and that every
  configured region exists (and is enabled) for the account.
* A create sends the row's client token to EC2 (``ClientToken``, idempotent at AWS) and writes it
  as the tag ``stackyard-client-token`` too; a retried create and ``find_instance`` look it up by that
  tag first, which also covers EC2-compatible endpoints (moto) that ignore ``ClientToken``.
* Instances carry the managed tags and ``Name``; their root volume is deleted with them and is not
  tagged as ours (it is no volume of the control plane). Spot offers launch as one-time spot
  instances (``InstanceMarketOptions``) that terminate when reclaimed.
* ``instance_states`` asks each region once per 200 ids (``describe_instances`` filtered by id, so
  an unknown id does not fail the others). ``pending`` is ``provisioning``; ``stopping``, ``stopped``,
  ``shutting-down`` and ``terminated`` are ``interrupted``: the control plane never stops an
  instance and only asks about instances it still holds, so one found down was taken down outside
  Stackyard (a spot reclaim, a host failure, an operator). An id EC2 does not list is
  ``NotFoundError``: right after a launch EC2 may not list it yet (eventual consistency), and the
  poller retries those.
* ``placement: cluster`` fleets get an EC2 placement group with ``Strategy=cluster`` (tagged as ours;
  an existing group of that name is fine), their instances are launched with
  ``Placement={"GroupName", "AvailabilityZone"}``, and the group is deleted once the fleet is gone
  (``InvalidPlacementGroup.InUse`` while instances are still shutting down is a ``TransientError``).
* Workloads run through AWS Systems Manager Run Command: the ``AwsJobs`` mixin (``aws_jobs``), whose
  docstring states what a start, poll, stop and log read do. Instances get the config's
  ``instance_profile`` (``IamInstanceProfile``), which SSM needs to reach their agent.
"""

from __future__ import annotations

from botocore.exceptions import ClientError

from backends.drivers import aws_calls, aws_config, aws_offers
from backends.drivers.aws_calls import TtlCache, aws_call, aws_errors, error_code
from backends.drivers.aws_jobs import AwsJobs
from backends.drivers.aws_offers import AwsOffers, _pages
from backends.drivers.aws_volumes import TAG_CLIENT_TOKEN, AwsVolumes, aws_tags
from backends.drivers.base import (
    TAG_INSTANCE,
    TAG_MANAGED,
    TAG_VOLUME,
    Driver,
    DriverError,
    FatalError,
    InstanceState,
    NotFoundError,
    Offer,
    TaggedResource,
    TransientError,
)
from core.errors import InvalidInput

STATES = {"pending": InstanceState.PROVISIONING, "running": InstanceState.RUNNING}
LIVE_INSTANCE_STATES = ["pending", "running", "stopping", "stopped"]
LIVE_VOLUME_STATES = ["creating", "available", "in-use"]
DEFAULT_IMAGE_NAME = "al2023-ami-2023.*-kernel-6.1-x86_64"  # Amazon Linux 2023, owned by amazon
IDS_PER_CALL = 200  # EC2's limit of values per filter
_regions_of = TtlCache(24 * 3600)  # (backend pk, instance or volume id) -> region: ids never move
_images = TtlCache(3600)


def clear_caches() -> None:
    """Forget every cached AWS answer of every backend (offers, zones, subnets, images, regions of ids)."""
    aws_offers.clear_caches()
    _regions_of.clear()
    _images.clear()


class AwsDriver(AwsJobs, AwsVolumes, AwsOffers, Driver):
    """The driver of ``aws`` backends; see the module docstring."""

    type_name = "aws"

    def __init__(self, backend):
        super().__init__(backend)
        try:
            self.credentials = aws_config.validate_credentials(backend.credentials)
        except InvalidInput as exc:
            raise FatalError(f"backend {backend.name!r} has invalid credentials: {exc.detail}") from exc
        self._session = None
        self._clients: dict[tuple[str, str], object] = {}

    @classmethod
    def validate_config(cls, config: dict) -> dict:
        return aws_config.validate_config(config)

    @classmethod
    def validate_credentials(cls, credentials: dict) -> dict:
        return aws_config.validate_credentials(credentials)

    # --- plumbing ---------------------------------------------------------------------------

    def client(self, region: str, service: str = "ec2"):
        """The boto3 client of ``service`` in ``region`` (made once per driver)."""
        if (service, region) not in self._clients:
            with aws_errors("create an AWS client"):
                if self._session is None:
                    self._session = aws_calls.make_session(self.credentials)
                self._clients[service, region] = aws_calls.make_client(self._session, service, region,
                                                                       self.config.get("endpoint_url"))
        return self._clients[service, region]

    def own_region(self, region: str) -> str:
        if region not in self.config["regions"]:
            raise FatalError(f"region {region!r} is not one of this backend's regions: "
                             f"{', '.join(self.config['regions'])}")
        return region

    def remember_region(self, resource_id: str, region: str) -> None:
        _regions_of.put((self.backend.pk, resource_id), region)

    def locate(self, kind: str, resource_id: str) -> str | None:
        """The region of one of our instances or volumes (remembered, else asked region by region)."""
        if region := _regions_of.get((self.backend.pk, resource_id)):
            return region
        for region in self.config["regions"]:
            found = (self.describe_instance(resource_id, region) if kind == "instance"
                     else self._describe("volume", region, [{"Name": "volume-id", "Values": [resource_id]}]))
            if found:
                self.remember_region(resource_id, region)
                return region
        return None

    def _describe(self, kind: str, region: str, filters: list[dict]) -> list[dict]:
        """Every instance or volume of ``region`` matching ``filters``."""
        ec2 = self.client(region)
        with aws_errors(f"describe_{kind}s in {region}"):
            if kind == "volume":
                return _pages(ec2.describe_volumes, "Volumes", Filters=filters)
            reservations = _pages(ec2.describe_instances, "Reservations", Filters=filters)
        return [instance for reservation in reservations for instance in reservation["Instances"]]

    def describe_instance(self, instance_id: str, region: str) -> dict | None:
        found = self._describe("instance", region, [{"Name": "instance-id", "Values": [instance_id]}])
        return found[0] if found else None

    def by_token(self, kind: str, client_token: str, regions: list[str]) -> dict | None:
        """The instance or volume a create with ``client_token`` made (the oldest, if several)."""
        when = "LaunchTime" if kind == "instance" else "CreateTime"
        for region in regions:
            found = self._describe(kind, region, [{"Name": f"tag:{TAG_CLIENT_TOKEN}", "Values": [client_token]}])
            if found:
                return min(found, key=lambda resource: resource.get(when) or 0)
        return None

    # --- access and locations -----------------------------------------------------------------

    def check_access(self) -> None:
        regions = self.config["regions"]
        known = aws_calls.known_regions()
        # Asked in a region botocore knows, so that a misspelt region is reported, not unreachable.
        home = next((region for region in regions if region in known), "us-east-1")
        with aws_errors(f"access check (describe_regions in {home})"):
            answer = self.client(home).describe_regions(AllRegions=True)["Regions"]
        status = {region["RegionName"]: region.get("OptInStatus", "") for region in answer}
        if unknown := [region for region in regions if region not in status]:
            raise FatalError(f"unknown AWS region(s): {', '.join(unknown)} (this account has "
                             f"{len(status)} regions, e.g. {', '.join(sorted(status)[:3])})")
        if disabled := [region for region in regions if status[region] == "not-opted-in"]:
            raise FatalError(f"AWS region(s) not enabled for this account: {', '.join(disabled)}")

    # --- instances ----------------------------------------------------------------------------

    @aws_call
    def create_instance(self, *, name: str, offer: Offer, tags: dict[str, str] | None = None,
                        client_token: str = "", placement_group: str = "") -> str:
        region = self.own_region(offer.region)
        if client_token and (found := self.by_token("instance", client_token, [region])):
            return found["InstanceId"]
        all_tags = {**(tags or {}), "Name": name, **({TAG_CLIENT_TOKEN: client_token} if client_token else {})}
        answer = self.client(region).run_instances(**self._launch(offer, all_tags, client_token, placement_group))
        instance_id = answer["Instances"][0]["InstanceId"]
        self.remember_region(instance_id, region)
        return instance_id

    def _launch(self, offer: Offer, tags: dict[str, str], client_token: str, placement_group: str = "") -> dict:
        """The ``run_instances`` parameters of one instance of ``offer`` (in ``placement_group`` if given)."""
        image_id, root_device = self._image(offer.region)
        params = {
            "ImageId": image_id, "InstanceType": offer.instance_type, "MinCount": 1, "MaxCount": 1,
            "TagSpecifications": [{"ResourceType": "instance", "Tags": aws_tags(tags)}],
            "BlockDeviceMappings": [{"DeviceName": root_device, "Ebs": {
                "VolumeSize": offer.resources.get("disk_gb") or aws_config.DEFAULT_DISK_GB, "VolumeType": "gp3",
                "DeleteOnTermination": True}}],
        }
        if client_token:
            params["ClientToken"] = client_token
        if profile := self.config.get("instance_profile"):
            params["IamInstanceProfile"] = aws_config.instance_profile_param(profile)
        if offer.spot:
            params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": {
                "SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}}
        subnets = self.zone_subnets(offer.region)
        if subnets is None:
            params["Placement"] = {"AvailabilityZone": offer.availability_zone}
        elif offer.availability_zone in subnets:
            params["NetworkInterfaces"] = [{"DeviceIndex": 0, "SubnetId": subnets[offer.availability_zone],
                                            "AssociatePublicIpAddress": self.config.get("public_ips", True),
                                            "DeleteOnTermination": True}]
        else:
            raise FatalError(f"no subnet of this backend in {offer.availability_zone}")
        if placement_group:
            params["Placement"] = {"GroupName": placement_group, "AvailabilityZone": offer.availability_zone}
        return params

    # --- placement groups -----------------------------------------------------------------------

    @aws_call
    def create_placement_group(self, *, region: str, name: str) -> str:
        ec2 = self.client(self.own_region(region))
        try:
            ec2.create_placement_group(GroupName=name, Strategy="cluster", TagSpecifications=[
                {"ResourceType": "placement-group", "Tags": aws_tags({TAG_MANAGED: "true"})}])
        except ClientError as err:
            if error_code(err) != "InvalidPlacementGroup.Duplicate":
                raise
        return name

    @aws_call
    def delete_placement_group(self, *, region: str, name: str) -> None:
        try:
            self.client(self.own_region(region)).delete_placement_group(GroupName=name)
        except ClientError as err:
            code = error_code(err)
            if code == "InvalidPlacementGroup.InUse":
                raise TransientError(f"placement group {name} is still in use (its instances are shutting "
                                     f"down); retrying") from err
            if code != "InvalidPlacementGroup.Unknown":
                raise

    def _image(self, region: str) -> tuple[str, str]:
        """``(ami_id, root_device_name)``: the configured AMI, else the newest Amazon Linux 2023 one."""
        ami = aws_config.ami_for(self.config, region)
        key = (self.cache_key(), region, ami)
        if (image := _images.get(key)) is None:
            ec2 = self.client(region)
            with aws_errors(f"describe_images in {region}"):
                images = (ec2.describe_images(ImageIds=[ami])["Images"] if ami else ec2.describe_images(
                    Owners=["amazon"], Filters=[{"Name": "name", "Values": [DEFAULT_IMAGE_NAME]},
                                                {"Name": "state", "Values": ["available"]},
                                                {"Name": "architecture", "Values": ["x86_64"]}])["Images"])
            if not images:
                raise FatalError(f"no AMI {ami or DEFAULT_IMAGE_NAME!r} in {region}; set ami_id in the config")
            newest = max(images, key=lambda i: (i.get("CreationDate", ""), i.get("Name", "")))
            image = (newest["ImageId"], newest.get("RootDeviceName") or "/dev/xvda")
            _images.put(key, image)
        return image

    @aws_call
    def find_instance(self, *, client_token: str) -> str | None:
        found = self.by_token("instance", client_token, self.config["regions"]) if client_token else None
        return found["InstanceId"] if found else None

    @aws_call
    def terminate_instance(self, *, instance_id: str) -> None:
        region = self.locate("instance", instance_id)
        if region is None:
            raise NotFoundError(f"instance {instance_id!r} not found in {', '.join(self.config['regions'])}")
        self.client(region).terminate_instances(InstanceIds=[instance_id])

    def instance_state(self, *, instance_id: str) -> str:
        state = self.instance_states(instance_ids=[instance_id])[instance_id]
        if isinstance(state, DriverError):
            raise state
        return state

    def instance_states(self, *, instance_ids: list[str]) -> dict[str, str | DriverError]:
        remembered = {i: _regions_of.get((self.backend.pk, i)) for i in instance_ids}
        regions = (set(remembered.values()) if all(remembered.values()) else set(self.config["regions"]))
        found, failed = {}, None
        for region in sorted(regions):
            ids = [i for i in instance_ids if remembered[i] in (region, None)]
            for start in range(0, len(ids), IDS_PER_CALL):
                try:
                    for instance in self._describe("instance", region, [
                            {"Name": "instance-id", "Values": ids[start:start + IDS_PER_CALL]}]):
                        found[instance["InstanceId"]] = instance
                        self.remember_region(instance["InstanceId"], region)
                except DriverError as err:
                    failed = err
        return {i: STATES.get(found[i]["State"]["Name"], InstanceState.INTERRUPTED).value if i in found
                else failed or NotFoundError(f"instance {i!r} not found") for i in instance_ids}

    # --- inventory ----------------------------------------------------------------------------

    @aws_call
    def list_tagged_resources(self) -> list[TaggedResource]:
        """Instances (not terminated) and volumes (not deleted) tagged ``stackyard-managed=true``, in
        every region of the backend."""
        managed = {"Name": f"tag:{TAG_MANAGED}", "Values": ["true"]}
        resources = []
        for region in self.config["regions"]:
            for instance in self._describe("instance", region, [
                    managed, {"Name": "instance-state-name", "Values": LIVE_INSTANCE_STATES}]):
                tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
                resources.append(TaggedResource("instance", instance["InstanceId"], tags.get(TAG_INSTANCE, ""),
                                                region, instance["Placement"]["AvailabilityZone"],
                                                instance.get("LaunchTime"), tags))
            for volume in self._describe("volume", region, [managed, {"Name": "status", "Values": LIVE_VOLUME_STATES}]):
                tags = {t["Key"]: t["Value"] for t in volume.get("Tags", [])}
                resources.append(TaggedResource("volume", volume["VolumeId"], tags.get(TAG_VOLUME, ""), region,
                                                volume["AvailabilityZone"], volume.get("CreateTime"), tags))
        return resources
