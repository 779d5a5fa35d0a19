"""``manage.py refresh_aws_prices [--regions R,..] [--types T,..] [--output PATH] [--source URL]``:
regenerate the ``aws`` driver's price catalogue from AWS's public price list.

AWS publishes every EC2 price, without credentials, as one CSV per region (the Price List bulk
files). The command streams the file of each region and keeps the on-demand hourly price of each
wanted instance type for Linux, shared tenancy, no pre-installed software. By default it refreshes
the regions and types the shipped catalogue already has, in place.

If the price list cannot be reached or read, it says so, changes nothing (the catalogue in use
stays as it is, with its own source and date) and exits 1. The file is replaced atomically.
"""

import csv
import datetime
import io
import json
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from backends.drivers.aws_offers import PRICES_PATH, load_catalogue

SOURCE = "https://pricing.us-east-1.amazonaws.com/offers/v1.0/aws/AmazonEC2/current/{region}/index.csv"
# The rows of the plain on-demand Linux price of an instance type.
WANTED = {"TermType": "OnDemand", "Unit": "Hrs", "Product Family": "Compute Instance", "Operating System": "Linux",
          "Tenancy": "Shared", "Pre Installed S/W": "NA", "CapacityStatus": "Used"}


class PriceListError(Exception):
    """The price list could not be fetched or read."""


def read_price_list(lines, types: set[str]) -> tuple[dict[str, float], str]:
    """``({instance_type: usd_per_hour}, publication_date)`` of one region's price list CSV lines."""
    rows = csv.reader(lines)
    published, header = "", None
    for row in rows:
        if row and row[0] == "SKU":
            header = {name: i for i, name in enumerate(row)}
            break
        if len(row) >= 2 and row[0] == "Publication Date":
            published = row[1]
    if header is None or "Instance Type" not in header or "PricePerUnit" not in header:
        raise PriceListError("not an EC2 price list (no SKU/Instance Type/PricePerUnit header)")
    checks = [(header[column], value) for column, value in WANTED.items() if column in header]
    type_at, price_at, operation_at = header["Instance Type"], header["PricePerUnit"], header.get("operation")
    prices: dict[str, float] = {}
    for row in rows:
        if len(row) < len(header) or row[type_at] not in types or any(row[i] != value for i, value in checks):
            continue
        if operation_at is not None and row[operation_at] != "RunInstances":
            continue
        price = float(row[price_at])
        if price > 0:
            prices[row[type_at]] = price
    return prices, published


def fetch_region(source: str, region: str, types: set[str], timeout: float) -> tuple[dict[str, float], str]:
    url = source.format(region=region)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return read_price_list(io.TextIOWrapper(response, encoding="utf-8", newline=""), types)
    except (urllib.error.URLError, OSError, ValueError, csv.Error) as err:
        raise PriceListError(f"{url}: {err}") from err


def write_atomically(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".aws_prices.", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")
    os.replace(tmp, path)


class Command(BaseCommand):
    help = "Refresh the aws driver's price catalogue (aws_prices.json) from AWS's public price list."

    def add_arguments(self, parser):
        parser.add_argument("--regions", help="comma-separated regions (default: those of the current catalogue)")
        parser.add_argument("--types", help="comma-separated instance types (default: those of the current catalogue)")
        parser.add_argument("--output", default=str(PRICES_PATH), help="the file to write (default: the shipped one)")
        parser.add_argument("--source", default=SOURCE, help="the price list URL, with {region} in it")
        parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for AWS (default 60)")

    def handle(self, *args, regions, types, output, source, timeout, **options):
        output = Path(output)
        current = load_catalogue(output if output.exists() else PRICES_PATH)
        regions = regions.split(",") if regions else sorted(current["regions"])
        types = set(types.split(",")) if types else {t for prices in current["regions"].values() for t in prices}
        fetched, dates = {}, set()
        for region in regions:
            try:
                prices, published = fetch_region(source, region, types, timeout)
            except PriceListError as err:
                raise CommandError(self._kept(output, current, f"AWS's public price list is not reachable or not "
                                                               f"readable ({err})")) from None
            if not prices:
                raise CommandError(self._kept(output, current, f"the price list of {region} prices none of "
                                                               f"{', '.join(sorted(types))}"))
            if missing := sorted(types - prices.keys()):
                self.stdout.write(f"{region}: no on-demand Linux price for {', '.join(missing)} (not offered there)")
            fetched[region] = dict(sorted(prices.items()))
            if published:
                dates.add(published[:10])
        write_atomically(output, {
            "source": f"AWS Price List bulk files: {source}",
            "method": "python manage.py refresh_aws_prices",
            "as_of": max(dates) if dates else datetime.date.today().isoformat(),
            "fetched_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "currency": "USD",
            "unit": "per instance-hour: on-demand, Linux, shared tenancy, no pre-installed software",
            "regions": fetched,
        })
        count = sum(len(prices) for prices in fetched.values())
        self.stdout.write(f"wrote {count} prices in {len(fetched)} region(s) to {output}")

    @staticmethod
    def _kept(output: Path, current: dict, why: str) -> str:
        return (f"{why}. Nothing was changed: {output} keeps its prices as of {current.get('as_of', '?')} "
                f"({current.get('source', 'unknown source')}).")
