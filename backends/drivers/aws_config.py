"""The ``aws`` backend's configuration and credentials: validation and defaults.

Config (dstack's keys, plus ours)::

    regions: [us-east-1, eu-west-1]      # required
    endpoint_url: http://127.0.0.1:5000  # optional: any EC2-compatible endpoint (moto, a test double)
    vpc_name: my-vpc                     # optional: launch into the subnets of the VPC tagged Name=my-vpc
    subnet_ids: [subnet-0abc...]         # optional (instead of vpc_name): launch into these subnets
    public_ips: true                     # optional, default true: give instances a public IP
    ami_id: ami-0abc... | {region: ami}  # optional: else the newest Amazon Linux 2023 image of the region
    disk_gb: 100                         # optional, default 100: the root EBS volume of every instance
    instance_profile: stackyard-ssm      # optional: the IAM instance profile (name or ARN) instances get;
                                         # runs need one with AmazonSSMManagedInstanceCore (``aws_jobs``)

Credentials: ``{"type": "access_key", "access_key": ..., "secret_key": ...}`` or ``{"type": "default"}``
(boto3's own chain: environment, ``~/.aws``, the instance role).
"""

from __future__ import annotations

import re

from backends.drivers.orphan_policy import ORPHAN_KEYS, validate_orphan_keys
from core.errors import InvalidInput

CONFIG_KEYS = ("regions", "endpoint_url", "vpc_name", "subnet_ids", "public_ips", "ami_id", "disk_gb",
               "instance_profile", *ORPHAN_KEYS)
DEFAULT_DISK_GB = 100
MAX_DISK_GB = 16384  # the largest gp3 volume
# us-east-1, eu-central-2, us-gov-west-1, cn-north-1, ap-southeast-4 ...
REGION_NAME = re.compile(r"[a-z]{2}(-[a-z]+)+-\d{1,2}")
AMI_ID = re.compile(r"ami-[0-9a-f]{8,17}")
SUBNET_ID = re.compile(r"subnet-[0-9a-f]{8,17}")
PROFILE_NAME = re.compile(r"[\w+=,.@-]{1,128}")  # IAM's rule for instance profile names
PROFILE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:instance-profile/([\w+=,.@/-]{1,512})")
CREDENTIAL_TYPES = {"access_key": ("type", "access_key", "secret_key"), "default": ("type",)}


def _invalid(key: str, detail: str, code: str = "invalid_config") -> InvalidInput:
    return InvalidInput(detail, code=code, field=key)


def _is_name(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


def validate_config(config: dict) -> dict:
    """Return the normalized config (only the keys given), or ``InvalidInput`` naming the bad key."""
    if not isinstance(config, dict):
        raise _invalid("config", "the aws config must be an object")
    if unknown := sorted(set(config) - set(CONFIG_KEYS)):
        raise _invalid(unknown[0], f"unknown aws config key {unknown[0]!r}; allowed: {', '.join(CONFIG_KEYS)}")
    if "vpc_name" in config and "subnet_ids" in config:
        raise _invalid("subnet_ids", "give vpc_name or subnet_ids, not both")
    cleaned = {"regions": _regions(config.get("regions"))}
    checks = {"endpoint_url": _endpoint_url, "vpc_name": _vpc_name, "subnet_ids": _subnet_ids,
              "public_ips": _public_ips, "ami_id": _ami_id, "disk_gb": _disk_gb, "instance_profile": _instance_profile}
    for key, check in checks.items():
        if key in config:
            cleaned[key] = check(config[key], cleaned["regions"])
    cleaned.update(validate_orphan_keys(config))
    return cleaned


def _regions(value) -> list[str]:
    if value is None:
        raise _invalid("regions", "regions is required: the AWS regions to use, e.g. [us-east-1]")
    if not isinstance(value, list) or not value:
        raise _invalid("regions", "regions must be a non-empty list of AWS region names")
    for i, region in enumerate(value):
        if not isinstance(region, str) or not REGION_NAME.fullmatch(region):
            raise _invalid(f"regions[{i}]", f"regions[{i}]: {region!r} is not an AWS region name (like us-east-1)")
    if len(set(value)) != len(value):
        raise _invalid("regions", "regions must not repeat a region")
    return list(value)


def _endpoint_url(value, _regions) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
        raise _invalid("endpoint_url", "endpoint_url must be an http:// or https:// URL")
    return value


def _vpc_name(value, _regions) -> str:
    if not _is_name(value):
        raise _invalid("vpc_name", "vpc_name must be the Name tag of a VPC (a non-empty string)")
    return value


def _subnet_ids(value, _regions) -> list[str]:
    if not isinstance(value, list) or not value:
        raise _invalid("subnet_ids", "subnet_ids must be a non-empty list of subnet ids")
    for i, subnet in enumerate(value):
        if not isinstance(subnet, str) or not SUBNET_ID.fullmatch(subnet):
            raise _invalid(f"subnet_ids[{i}]", f"subnet_ids[{i}]: {subnet!r} is not a subnet id (subnet-...)")
    return list(value)


def _public_ips(value, _regions) -> bool:
    if not isinstance(value, bool):
        raise _invalid("public_ips", "public_ips must be true or false")
    return value


def _ami_id(value, regions) -> str | dict:
    if isinstance(value, str):
        if not AMI_ID.fullmatch(value):
            raise _invalid("ami_id", f"ami_id: {value!r} is not an AMI id (ami-...)")
        return value
    if not isinstance(value, dict) or not value:
        raise _invalid("ami_id", "ami_id must be an AMI id, or a mapping of region to AMI id")
    for region, ami in value.items():
        if region not in regions:
            raise _invalid(f"ami_id.{region}", f"ami_id.{region}: {region!r} is not one of the backend's regions")
        if not isinstance(ami, str) or not AMI_ID.fullmatch(ami):
            raise _invalid(f"ami_id.{region}", f"ami_id.{region}: {ami!r} is not an AMI id (ami-...)")
    return dict(value)


def _disk_gb(value, _regions) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 8 <= value <= MAX_DISK_GB:
        raise _invalid("disk_gb", f"disk_gb must be an integer number of GB, 8..{MAX_DISK_GB}")
    return value


def _instance_profile(value, _regions) -> str:
    if not isinstance(value, str) or not (PROFILE_NAME.fullmatch(value) or PROFILE_ARN.fullmatch(value)):
        raise _invalid("instance_profile", "instance_profile must be an IAM instance profile name or ARN "
                       "(arn:aws:iam::<account>:instance-profile/<name>)")
    return value


def instance_profile_param(value: str) -> dict:
    """``run_instances``' ``IamInstanceProfile`` for a configured name or ARN."""
    return {"Arn": value} if value.startswith("arn:") else {"Name": value}


def validate_credentials(credentials: dict) -> dict:
    """Return the normalized credentials, or ``InvalidInput`` naming the bad key (code ``invalid_credentials``)."""
    if not isinstance(credentials, dict):
        raise _invalid("credentials", "credentials must be an object", "invalid_credentials")
    kind = credentials.get("type")
    if kind not in CREDENTIAL_TYPES:
        raise _invalid("credentials.type", "credentials.type must be 'access_key' (with access_key and secret_key) "
                       "or 'default' (boto3's own chain)", "invalid_credentials")
    keys = CREDENTIAL_TYPES[kind]
    if extra := sorted(set(credentials) - set(keys)):
        raise _invalid(f"credentials.{extra[0]}", f"credentials of type {kind} have no key {extra[0]!r}; "
                       f"keys: {', '.join(keys)}", "invalid_credentials")
    for key in keys[1:]:
        if not _is_name(credentials.get(key)):
            raise _invalid(f"credentials.{key}", f"credentials.{key} is required (a non-empty string)",
                           "invalid_credentials")
    return {key: credentials[key].strip() if key != "type" else kind for key in keys}


def ami_for(config: dict, region: str) -> str:
    """The AMI the config names for ``region`` ("" if it names none)."""
    ami = config.get("ami_id", "")
    return ami.get(region, "") if isinstance(ami, dict) else ami
