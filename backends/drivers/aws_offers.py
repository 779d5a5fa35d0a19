"""Offers and zones of the ``aws`` driver: the ``AwsOffers`` mixin, and the shipped price catalogue.

* The instance types offered are those the catalogue (``aws_prices.json``, with its source and date
  in it) prices in a region. Their shapes (vCPUs, memory, GPUs with name, count and memory) come from
  ``describe_instance_types``, the zones that have them from ``describe_instance_type_offerings``,
  and spot offers from ``describe_spot_price_history`` (none if the account may not read it).
* Offers are cached per backend (its pk and a digest of its config and credentials) for
  ``OFFERS_TTL`` seconds, so placement reads them from memory, not from AWS, for every job.
* A backend with ``vpc_name``, ``subnet_ids`` or ``public_ips: false`` is offered only in the zones
  where it has a subnet to launch into.
* ``locations`` answers from a cached ``describe_availability_zones`` (one call per region per TTL);
  if AWS cannot be asked it answers the zones it last saw, never an error.
"""

from __future__ import annotations

import datetime
import json
import logging
from pathlib import Path

from backends.drivers.aws_calls import TtlCache, aws_errors, fingerprint
from backends.drivers.aws_config import DEFAULT_DISK_GB
from backends.drivers.base import DriverError, FatalError, Offer

logger = logging.getLogger(__name__)
PRICES_PATH = Path(__file__).with_name("aws_prices.json")
OFFERS_TTL = 300  # seconds
_offers = TtlCache(OFFERS_TTL)
_zones = TtlCache(OFFERS_TTL)
_subnets = TtlCache(OFFERS_TTL)
_last_zones: dict = {}  # the last answer per backend, for when AWS cannot be asked


def clear_caches() -> None:
    """Forget every cached answer (tests; or after the catalogue was refreshed)."""
    for cache in (_offers, _zones, _subnets):
        cache.clear()
    _last_zones.clear()


def load_catalogue(path: Path = PRICES_PATH) -> dict:
    """The price catalogue: ``{"source", "as_of", "regions": {region: {instance_type: usd_per_hour}}, ...}``."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _shape(info: dict, disk_gb: int) -> dict:
    """The control plane's ``resources`` of an EC2 instance type."""
    gpus = [{"name": gpu["Name"], "memory_mib": gpu.get("MemoryInfo", {}).get("SizeInMiB", 0)}
            for gpu in info.get("GpuInfo", {}).get("Gpus", []) for _ in range(gpu.get("Count", 0))]
    return {"cpus": info["VCpuInfo"]["DefaultVCpus"], "memory_mib": info["MemoryInfo"]["SizeInMiB"], "gpus": gpus,
            "disk_gb": disk_gb}


def _pages(call, key: str, **params) -> list:
    """Every item of a paginated EC2 describe call (``NextToken`` followed to the end)."""
    items, token = [], None
    while True:
        answer = call(**params, **({"NextToken": token} if token else {}))
        items += answer.get(key, [])
        token = answer.get("NextToken")
        if not token:
            return items


class AwsOffers:
    """The offers and locations of ``AwsDriver``; see the module docstring.

    A mixin: it relies on the driver for ``backend``, ``config``, ``cache_key`` and ``client``.
    """

    def offers(self) -> list[Offer]:
        key = self.cache_key()
        offers = _offers.get(key)
        if offers is None:
            offers = self._fresh_offers()
            _offers.put(key, offers)
        return list(offers)

    def _fresh_offers(self) -> list[Offer]:
        prices = load_catalogue()["regions"]
        offers = []
        for region in self.config["regions"]:
            if not prices.get(region):
                continue
            # Per region: DescribeInstanceTypes lists only the types the region has.
            shapes = self._shapes(region, sorted(prices[region]))
            priced = {itype: price for itype, price in prices[region].items() if itype in shapes}
            if priced:
                offers += self._region_offers(region, priced, shapes)
        return offers

    def _shapes(self, region: str, types: list[str]) -> dict[str, dict]:
        disk_gb = self.config.get("disk_gb", DEFAULT_DISK_GB)
        with aws_errors(f"describe_instance_types in {region}"):
            infos = _pages(self.client(region).describe_instance_types, "InstanceTypes",
                           Filters=[{"Name": "instance-type", "Values": types}])
        return {info["InstanceType"]: _shape(info, disk_gb) for info in infos}

    def _region_offers(self, region: str, priced: dict[str, float], shapes: dict) -> list[Offer]:
        ec2 = self.client(region)
        with aws_errors(f"describe_instance_type_offerings in {region}"):
            placed = _pages(ec2.describe_instance_type_offerings, "InstanceTypeOfferings",
                            LocationType="availability-zone",
                            Filters=[{"Name": "instance-type", "Values": sorted(priced)}])
        launchable = self.zone_subnets(region)
        spot = self._spot_prices(region, sorted(priced))
        offers = []
        for item in sorted(placed, key=lambda i: (i["InstanceType"], i["Location"])):
            itype, zone = item["InstanceType"], item["Location"]
            if launchable is not None and zone not in launchable:
                continue
            offers.append(Offer(itype, region, zone, shapes[itype], float(priced[itype]), False))
            if (itype, zone) in spot:
                offers.append(Offer(itype, region, zone, shapes[itype], spot[itype, zone], True))
        return offers

    def _spot_prices(self, region: str, types: list[str]) -> dict[tuple[str, str], float]:
        """The current spot price per (type, zone); {} where the account may not read them."""
        try:
            with aws_errors(f"describe_spot_price_history in {region}"):
                history = _pages(self.client(region).describe_spot_price_history, "SpotPriceHistory",
                                 InstanceTypes=types, ProductDescriptions=["Linux/UNIX"],
                                 StartTime=datetime.datetime.now(datetime.UTC))
        except FatalError as err:
            logger.warning("no spot offers for backend %s in %s: %s", self.backend.name, region, err)
            return {}
        latest: dict[tuple[str, str], tuple] = {}
        for entry in history:
            place = (entry["InstanceType"], entry["AvailabilityZone"])
            if place not in latest or entry["Timestamp"] > latest[place][0]:
                latest[place] = (entry["Timestamp"], float(entry["SpotPrice"]))
        return {place: price for place, (_, price) in latest.items()}

    # --- where instances can go ------------------------------------------------------------------

    def locations(self) -> dict[str, list[str]]:
        key = self.cache_key()
        zones = _zones.get(key)
        if zones is None:
            try:
                zones = {region: self._zones_of(region) for region in self.config["regions"]}
            except DriverError as err:
                logger.warning("zones of backend %s unknown just now: %s", self.backend.name, err)
                return _last_zones.get(key) or {region: [] for region in self.config["regions"]}
            _zones.put(key, zones)
            _last_zones[key] = zones
        return {region: list(names) for region, names in zones.items()}

    def _zones_of(self, region: str) -> list[str]:
        with aws_errors(f"describe_availability_zones in {region}"):
            answer = self.client(region).describe_availability_zones(
                Filters=[{"Name": "zone-type", "Values": ["availability-zone"]}])["AvailabilityZones"]
        return sorted(zone["ZoneName"] for zone in answer if zone.get("State", "available") == "available")

    def zone_subnets(self, region: str) -> dict[str, str] | None:
        """``{zone: subnet_id}`` an instance of ``region`` launches into, or None when EC2 picks (the
        default VPC with public IPs)."""
        if not ({"vpc_name", "subnet_ids"} & self.config.keys()) and self.config.get("public_ips", True):
            return None
        key = (self.cache_key(), region)
        subnets = _subnets.get(key)
        if subnets is None:
            subnets = self._find_subnets(region)
            _subnets.put(key, subnets)
        return subnets

    def _find_subnets(self, region: str) -> dict[str, str]:
        ec2 = self.client(region)
        if "subnet_ids" in self.config:
            filters = [{"Name": "subnet-id", "Values": self.config["subnet_ids"]}]
        elif "vpc_name" in self.config:
            with aws_errors(f"describe_vpcs in {region}"):
                vpcs = ec2.describe_vpcs(Filters=[{"Name": "tag:Name", "Values": [self.config["vpc_name"]]}])["Vpcs"]
            if not vpcs:
                return {}  # no such VPC in this region: nothing is offered there
            filters = [{"Name": "vpc-id", "Values": [vpcs[0]["VpcId"]]}]
        else:
            filters = [{"Name": "default-for-az", "Values": ["true"]}]
        with aws_errors(f"describe_subnets in {region}"):
            subnets = _pages(ec2.describe_subnets, "Subnets", Filters=filters)
        chosen: dict[str, str] = {}
        for subnet in sorted(subnets, key=lambda s: s["SubnetId"]):
            chosen.setdefault(subnet["AvailabilityZone"], subnet["SubnetId"])
        return chosen

    def cache_key(self) -> tuple:
        return (self.backend.pk, fingerprint(self.config, self.credentials))
