"""EBS volumes of the ``aws`` driver: the ``AwsVolumes`` mixin that ``AwsDriver`` inherits.

Guarantees beyond the ``Driver`` interface:

* A create sends the row's client token to EBS (``ClientToken``) and also writes it as the tag
  ``stackyard-client-token``: a create retried after a lost reply, and ``find_volume``, look the
  volume up by that tag first (EC2-compatible endpoints such as moto ignore ``ClientToken``).
* Volumes get the managed tags and ``Name``; a volume still ``creating`` is reported ``available``
  (the attach waits for it with ``TransientError``).
* An attach checks, before asking AWS, that the volume and the instance are in the same zone
  (``FatalError`` if not: EC2 refuses a cross-zone attach, but moto would allow it), and picks the
  first device of ``/dev/sdf``..``/dev/sdp`` the instance does not use. An attach in progress is a
  ``TransientError``; asking again answers the device once it is ``attached``.
* A detach is a request (``Force`` when forced); only ``is_volume_detached``, which reads the
  volume's attachments from ``describe_volumes``, says it is done.
* A call given ``region`` looks only there; without one (the orphan finder's deletes), the driver
  finds the volume in its regions.
"""

from __future__ import annotations

from botocore.exceptions import ClientError

from backends.drivers.aws_calls import aws_call, aws_errors, error_code
from backends.drivers.base import FatalError, NotFoundError, TransientError, VolumeInfo

TAG_CLIENT_TOKEN = "stackyard-client-token"
DEVICE_NAMES = [f"/dev/sd{letter}" for letter in "fghijklmnop"]
LIVE_ATTACHMENT = ("attaching", "attached", "busy", "detaching")
VOLUME_TYPE = "gp3"


def _info(volume: dict, region: str) -> VolumeInfo:
    state = volume.get("State", "")
    status = "in-use" if state == "in-use" else "deleted" if state in ("deleting", "deleted", "error") else "available"
    return VolumeInfo(volume["VolumeId"], region, volume["AvailabilityZone"], int(volume["Size"]), status)


def aws_tags(tags: dict[str, str]) -> list[dict]:
    return [{"Key": key, "Value": value} for key, value in tags.items()]


def _device_key(device: str) -> str:
    """``/dev/sdf``, ``/dev/xvdf`` and ``sdf`` name the same slot (Nitro instances rename them)."""
    name = device.rsplit("/", 1)[-1]
    return name[3:] if name.startswith("xvd") else name[2:] if name.startswith("sd") else name


class AwsVolumes:
    """The volume calls of ``AwsDriver``; see the module docstring.

    A mixin: it relies on the driver for ``client``, ``config``, ``locations``, ``own_region``,
    ``locate``, ``remember_region``, ``by_token`` and ``describe_instance``.
    """

    @aws_call
    def create_volume(self, *, name: str, region: str, availability_zone: str | None, size_gb: int,
                      tags: dict[str, str] | None = None, client_token: str = "") -> VolumeInfo:
        region = self.own_region(region)
        if client_token and (found := self.by_token("volume", client_token, [region])):
            return _info(found, region)
        zones = self.locations().get(region, [])
        zone = availability_zone or (zones[0] if zones else "")
        if not zone or (zones and zone not in zones):
            raise FatalError(f"zone {zone!r} is not in region {region!r} (zones: {', '.join(zones) or 'unknown'})")
        if not isinstance(size_gb, int) or isinstance(size_gb, bool) or size_gb <= 0:
            raise FatalError(f"volume size must be a positive number of GB, not {size_gb!r}")
        all_tags = {**(tags or {}), "Name": name, **({TAG_CLIENT_TOKEN: client_token} if client_token else {})}
        params = {"AvailabilityZone": zone, "Size": size_gb, "VolumeType": VOLUME_TYPE,
                  "TagSpecifications": [{"ResourceType": "volume", "Tags": aws_tags(all_tags)}]}
        if client_token:
            params["ClientToken"] = client_token
        volume = self.client(region).create_volume(**params)
        self.remember_region(volume["VolumeId"], region)
        return _info(volume, region)

    @aws_call
    def find_volume(self, *, client_token: str) -> VolumeInfo | None:
        if not client_token:
            return None
        for region in self.config["regions"]:
            if found := self.by_token("volume", client_token, [region]):
                return _info(found, region)
        return None

    @aws_call
    def register_volume(self, *, volume_id: str, region: str = "") -> VolumeInfo:
        region, volume = self._volume(volume_id, region)
        return _info(volume, region)

    @aws_call
    def delete_volume(self, *, volume_id: str, region: str = "") -> None:
        region = self.own_region(region) if region else self.locate("volume", volume_id)
        if region is None:
            return  # in none of our regions: deleted already (EBS forgets deleted volumes)
        try:
            self.client(region).delete_volume(VolumeId=volume_id)
        except ClientError as err:
            if error_code(err) == "InvalidVolume.NotFound":
                return
            if error_code(err) == "VolumeInUse":
                raise FatalError(f"volume {volume_id} is attached; detach it first") from err
            raise

    @aws_call
    def attach_volume(self, *, volume_id: str, instance_id: str, region: str = "",
                      availability_zone: str = "") -> str:
        region, volume = self._volume(volume_id, region)
        zone = volume["AvailabilityZone"]
        if availability_zone and availability_zone != zone:
            raise FatalError(f"volume {volume_id} is in {zone}, not in {availability_zone}")
        instance = self._instance_in(instance_id, region)
        self._check_attachable(volume, instance)
        mine = [a for a in volume.get("Attachments", []) if a.get("InstanceId") == instance_id]
        if mine:  # a retried call (_check_attachable refused any other attachment)
            return self._attached_device(volume_id, mine[0])
        device = self._free_device(instance)
        answer = self.client(region).attach_volume(Device=device, InstanceId=instance_id, VolumeId=volume_id)
        if answer.get("State") != "attached":
            raise TransientError(f"volume {volume_id} is {answer.get('State', 'attaching')} to {instance_id} as "
                                 f"{device}")
        return device

    def _instance_in(self, instance_id: str, region: str) -> dict:
        instance = self.describe_instance(instance_id, region)
        if instance is None:
            elsewhere = self.locate("instance", instance_id)
            if elsewhere:
                raise FatalError(f"instance {instance_id} is in {elsewhere}, the volume in {region}")
            raise NotFoundError(f"instance {instance_id} not found")
        return instance

    @staticmethod
    def _check_attachable(volume: dict, instance: dict) -> None:
        volume_id, instance_id = volume["VolumeId"], instance["InstanceId"]
        state = instance["State"]["Name"]
        if state == "pending":
            raise TransientError(f"instance {instance_id} is still pending")
        if state != "running":
            raise FatalError(f"instance {instance_id} is {state}")
        instance_zone = instance["Placement"]["AvailabilityZone"]
        if volume["AvailabilityZone"] != instance_zone:
            raise FatalError(f"volume {volume_id} is in {volume['AvailabilityZone']} but instance {instance_id} is in "
                             f"{instance_zone}: EBS volumes attach only in their own zone")
        for attachment in volume.get("Attachments", []):
            if attachment.get("State") in LIVE_ATTACHMENT and attachment.get("InstanceId") != instance_id:
                raise FatalError(f"volume {volume_id} is already attached to {attachment['InstanceId']}")
        if volume.get("State") == "creating":
            raise TransientError(f"volume {volume_id} is still being created")
        if volume.get("State") not in ("available", "in-use"):
            raise FatalError(f"volume {volume_id} is {volume.get('State')}")

    @staticmethod
    def _attached_device(volume_id: str, attachment: dict) -> str:
        state = attachment.get("State")
        if state == "attached":
            return attachment["Device"]
        if state == "attaching":
            raise TransientError(f"volume {volume_id} is still attaching as {attachment['Device']}")
        raise FatalError(f"volume {volume_id} is {state} from {attachment['InstanceId']}")

    @staticmethod
    def _free_device(instance: dict) -> str:
        used = {_device_key(mapping["DeviceName"]) for mapping in instance.get("BlockDeviceMappings", [])}
        for device in DEVICE_NAMES:
            if _device_key(device) not in used:
                return device
        raise FatalError(f"instance {instance['InstanceId']} has no free device name left")

    @aws_call
    def detach_volume(self, *, volume_id: str, instance_id: str, force: bool, region: str = "") -> None:
        region, volume = self._volume(volume_id, region)
        attachment = next((a for a in volume.get("Attachments", []) if a.get("InstanceId") == instance_id), None)
        if attachment is None or (attachment.get("State") == "detaching" and not force):
            return  # nothing (more) to ask: is_volume_detached tells when it is done
        try:
            self.client(region).detach_volume(VolumeId=volume_id, InstanceId=instance_id, Force=force)
        except ClientError as err:
            if error_code(err) not in ("InvalidAttachment.NotFound", "IncorrectState"):
                raise  # those two: detached or detaching already, which the next poll confirms

    @aws_call
    def is_volume_detached(self, *, volume_id: str, instance_id: str, region: str = "") -> bool:
        _, volume = self._volume(volume_id, region)
        return not any(a.get("InstanceId") == instance_id and a.get("State") in LIVE_ATTACHMENT
                       for a in volume.get("Attachments", []))

    def _volume(self, volume_id: str, region: str) -> tuple[str, dict]:
        """``(region, volume)`` as ``describe_volumes`` answers it; ``NotFoundError`` if it has no such volume."""
        region = self.own_region(region) if region else self.locate("volume", volume_id)
        if region is None:
            raise NotFoundError(f"volume {volume_id!r} not found in {', '.join(self.config['regions'])}")
        with aws_errors(f"describe_volumes in {region}"):
            volumes = self.client(region).describe_volumes(
                Filters=[{"Name": "volume-id", "Values": [volume_id]}])["Volumes"]
        if not volumes:
            raise NotFoundError(f"volume {volume_id!r} not found in {region}")
        self.remember_region(volume_id, region)
        return region, volumes[0]
