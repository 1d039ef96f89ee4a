"""Catalog rows for AWS from AWS's own APIs: EC2 `DescribeInstanceTypes` for the hardware and the
Price List API (`pricing:GetProducts`) for on-demand prices, plus the current spot price.

Why a module of its own: `tidegate offers --refresh` rebuilds the offers catalog where credentials
allow (backends/refresh.py drives it); this part speaks EC2's and the Price List's
vocabulary. Rows are the catalog's columns (backends.cloud.catalog.FIELDS), provider `aws`.

- Hardware: every x86_64 instance type with GPUs (`GpuInfo`) that EC2 offers in the region
  (`DescribeInstanceTypeOfferings`), paginated; the GPU name and memory come from `GpuInfo` (the
  memory as sold: EC2 reports the usable part, 22888 MiB for a 24 GB A10G, see `nominal_gb`).
- On-demand price: Linux, shared tenancy, no pre-installed software, capacity status `Used`, per
  region (`regionCode`), from `GetProducts` pages (each price list item is a JSON string).
- Spot price: `DescribeSpotPriceHistory` from now, the cheapest availability zone; without the
  permission the region keeps on-demand rows only.

boto3 is imported lazily; the Price List API lives in us-east-1 whatever regions are priced.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("backends.aws.catalog")

PRICING_REGION = "us-east-1"
LINUX_ON_DEMAND = {
    "operatingSystem": "Linux",
    "tenancy": "Shared",
    "preInstalledSw": "NA",
    "capacitystatus": "Used",
    "licenseModel": "No License required",
}
ClientFactory = Callable[[str, str], Any]  # (service, region) -> a boto3 client


class AwsCatalogError(Exception):
    """No credentials, or an API call failed; the message says which."""


def boto_clients(endpoint_url: str | None = None, pricing_endpoint_url: str | None = None) -> ClientFactory:
    """A factory of boto3 clients from one session; raises AwsCatalogError without credentials."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session()
    if session.get_credentials() is None:
        raise AwsCatalogError(
            "aws: no credentials found (boto3's chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
            "AWS_PROFILE, ~/.aws/credentials, an instance role); not refreshed"
        )
    config = Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10, read_timeout=60)

    def make(service: str, region: str) -> Any:
        url = pricing_endpoint_url if service == "pricing" else endpoint_url
        return session.client(service, region_name=region, endpoint_url=url, config=config)

    return make


def _gpu_types(ec2: Any) -> dict[str, dict[str, Any]]:
    """Instance type -> its DescribeInstanceTypes entry, for x86_64 types with GPUs offered here."""
    offered: set[str] = set()
    for page in ec2.get_paginator("describe_instance_type_offerings").paginate(LocationType="region"):
        offered.update(o["InstanceType"] for o in page.get("InstanceTypeOfferings", []))
    found: dict[str, dict[str, Any]] = {}
    # EC2's GPU instances are the P and G families; the filter keeps the pages few
    families = [{"Name": "instance-type", "Values": ["p*", "g*"]}]
    for page in ec2.get_paginator("describe_instance_types").paginate(Filters=families):
        for it in page.get("InstanceTypes", []):
            name = it.get("InstanceType", "")
            gpus = it.get("GpuInfo", {}).get("Gpus", [])
            arches = it.get("ProcessorInfo", {}).get("SupportedArchitectures", [])
            if gpus and "x86_64" in arches and name in offered:
                found[name] = it
    return found


def _on_demand_prices(pricing: Any, region: str) -> dict[str, float]:
    """Instance type -> USD per hour, Linux on-demand shared tenancy, in `region`."""
    filters = [{"Type": "TERM_MATCH", "Field": "regionCode", "Value": region}]
    filters += [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in LINUX_ON_DEMAND.items()]
    prices: dict[str, float] = {}
    paginator = pricing.get_paginator("get_products")
    for page in paginator.paginate(ServiceCode="AmazonEC2", Filters=filters, FormatVersion="aws_v1"):
        for raw in page.get("PriceList", []):
            item = json.loads(raw) if isinstance(raw, str) else raw
            name, price = price_of(item)
            if name and price is not None and price > 0:
                prices[name] = min(price, prices.get(name, price))
    return prices


def price_of(item: dict[str, Any]) -> tuple[str | None, float | None]:
    """(instance type, on-demand USD/hour) of one Price List item; None where it has none."""
    attributes = item.get("product", {}).get("attributes", {})
    name = attributes.get("instanceType")
    for term in item.get("terms", {}).get("OnDemand", {}).values():
        for dimension in term.get("priceDimensions", {}).values():
            if dimension.get("unit") not in ("Hrs", "Hours"):
                continue
            try:
                return name, float(dimension["pricePerUnit"]["USD"])
            except (KeyError, ValueError):
                continue
    return name, None


def _spot_prices(ec2: Any, types: Sequence[str]) -> dict[str, float]:
    spot: dict[str, float] = {}
    for start in range(0, len(types), 100):
        paginator = ec2.get_paginator("describe_spot_price_history")
        pages = paginator.paginate(
            InstanceTypes=list(types[start : start + 100]),
            ProductDescriptions=["Linux/UNIX", "Linux/UNIX (Amazon VPC)"],
            StartTime=datetime.now(UTC),
        )
        for page in pages:
            for item in page.get("SpotPriceHistory", []):
                price = float(item["SpotPrice"])
                if price > 0:
                    spot[item["InstanceType"]] = min(price, spot.get(item["InstanceType"], price))
    return spot


NOMINAL_GB = (8, 12, 16, 24, 32, 40, 48, 64, 80, 94, 96, 128, 141, 180, 192, 256, 288)


def nominal_gb(mib: float) -> float:
    """GPU memory as sold (24 GB), from what EC2 reports usable (22888 MiB for an A10G or L4):
    the nearest listed size at most 10% above the reported one, else the reported GiB rounded."""
    gib = mib / 1024
    return float(next((n for n in NOMINAL_GB if gib <= n <= gib * 1.1), round(gib)))


def rows_for(item: dict[str, Any], region: str, price: float, spot: bool) -> dict[str, str]:
    gpu = item["GpuInfo"]["Gpus"][0]
    count = sum(int(g.get("Count", 0)) for g in item["GpuInfo"]["Gpus"])
    disk = item.get("InstanceStorageInfo", {}).get("TotalSizeInGB", 0)
    return {
        "provider": "aws",
        "instance_name": item["InstanceType"],
        "location": region,
        "price": f"{price:.6g}",
        "cpu": str(item.get("VCpuInfo", {}).get("DefaultVCpus", 0)),
        "memory": f"{item.get('MemoryInfo', {}).get('SizeInMiB', 0) / 1024:g}",
        "gpu_count": str(count),
        "gpu_name": str(gpu.get("Name", "")),
        "gpu_memory": f"{nominal_gb(gpu.get('MemoryInfo', {}).get('SizeInMiB', 0)):g}",
        "spot": str(spot),
        "disk_size": str(disk),
        "gpu_vendor": str(gpu.get("Manufacturer", "NVIDIA")).lower(),
    }


def aws_rows(regions: Iterable[str], clients: ClientFactory) -> list[dict[str, str]]:
    """Catalog rows (on-demand and spot) for every GPU instance type in `regions`."""
    from botocore.exceptions import BotoCoreError, ClientError

    pricing = clients("pricing", PRICING_REGION)
    rows: list[dict[str, str]] = []
    for region in regions:
        try:
            ec2 = clients("ec2", region)
            types = _gpu_types(ec2)
            prices = _on_demand_prices(pricing, region)
        except (ClientError, BotoCoreError) as e:
            raise AwsCatalogError(f"aws {region}: {type(e).__name__}: {e}") from e
        try:
            spot = _spot_prices(ec2, sorted(t for t in types if t in prices))
        except (ClientError, BotoCoreError) as e:  # no permission for spot history: on-demand only
            log.warning("aws %s: no spot prices (%s)", region, e)
            spot = {}
        for name in sorted(types):
            if name not in prices:
                continue  # not sold on demand for Linux here (or retired)
            rows.append(rows_for(types[name], region, prices[name], spot=False))
            if name in spot:
                rows.append(rows_for(types[name], region, spot[name], spot=True))
    return rows
