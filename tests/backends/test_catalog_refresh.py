"""`tidegate offers --refresh` rebuilds the catalog from the clouds' own APIs, on recorded responses:
EC2 DescribeInstanceTypes from a moto server (moto ships AWS's recorded instance type data), the
Price List API and Azure's Retail Prices API from recorded pages (recorded_server.py), Azure
resource SKUs from the local ARM endpoint (fake_arm.py). Everything listens on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import conftest_cloud as cloud
import pytest
from azure.core.credentials import AccessToken
from fake_arm import FakeArm
from recorded_server import RecordedServer, load_fixture

from backends.aws.catalog_refresh import price_of
from backends.azure.catalog_refresh import gpu_model, linux_prices
from backends.base import Offer
from backends.cloud.catalog import SHIPPED_CATALOG, describe_catalog, load_catalog, read_meta
from backends.refresh import refresh_catalog
from backends.settings import AwsSettings, AzureSettings, CloudSettings

moto_url = cloud.moto_url
ROOT = Path(__file__).resolve().parents[2]
AWS_REGIONS = ["us-east-1", "us-west-2"]
AZURE_REGIONS = ["eastus", "westus3"]


class StaticCredential:
    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("fake-arm-token", 4_102_444_800)


@pytest.fixture
def recorded() -> Iterator[RecordedServer]:
    with RecordedServer() as server:
        yield server


@pytest.fixture
def arm() -> Iterator[FakeArm]:
    fake = FakeArm()
    fake.skus = load_fixture("azure_resource_skus.json")["value"]
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


def settings_for(moto: str, recorded: RecordedServer, arm: FakeArm | None) -> CloudSettings:
    backends: list[Any] = [
        AwsSettings(regions=AWS_REGIONS, endpoint_url=moto, pricing_endpoint_url=recorded.url)
    ]
    if arm is not None:
        backends.append(
            AzureSettings(
                subscription_id="sub-1",
                resource_group="rg-test",
                locations=AZURE_REGIONS,
                base_url=arm.url,
                retail_prices_url=f"{recorded.url}/api/retail/prices",
            )
        )
    return CloudSettings(backends=backends)


def recorded_aws_prices() -> dict[tuple[str, str], float]:
    out = {}
    for exchange in load_fixture("aws_pricing_get_products.json")["exchanges"]:
        for raw in exchange["response"]["PriceList"]:
            item = json.loads(raw)
            name, price = price_of(item)
            assert name is not None and price is not None
            out[(item["product"]["attributes"]["regionCode"], name)] = price
    return out


def recorded_azure_prices() -> dict[tuple[str, str, bool], float]:
    out = {}
    for exchange in load_fixture("azure_retail_prices.json")["exchanges"]:
        region = exchange["request"]["armRegionName"]
        for (size, spot), price in linux_prices(exchange["response"]["Items"]).items():
            out[(region, size, spot)] = price
    return out


def offered(endpoint: str, region: str) -> set[str]:
    ec2 = boto3.client("ec2", region_name=region, endpoint_url=endpoint)
    pages = ec2.get_paginator("describe_instance_type_offerings").paginate(LocationType="region")
    return {o["InstanceType"] for page in pages for o in page["InstanceTypeOfferings"]}


def find(offers: list[Offer], backend: str, region: str, name: str, spot: bool) -> Offer:
    found = [
        o for o in offers if (o.backend, o.region, o.instance_type, o.spot) == (backend, region, name, spot)
    ]
    assert len(found) == 1, (backend, region, name, spot, len(found))
    return found[0]


@pytest.mark.slow  # moto + recorded price pages, 2-12 s
def test_refresh_rebuilds_both_clouds_from_their_apis(
    tmp_path: Path, moto_url: str, recorded: RecordedServer, arm: FakeArm
) -> None:
    dest = tmp_path / "catalog.csv"
    report = refresh_catalog(
        settings_for(moto_url, recorded, arm), dest, SHIPPED_CATALOG, azure_credential=StaticCredential()
    )
    assert set(report.refreshed) == {"aws", "azure"} and report.skipped == {}
    offers = load_catalog(dest)
    assert report.total == len(offers)

    # AWS: hardware from DescribeInstanceTypes, on-demand prices from every Price List page
    aws_prices = recorded_aws_prices()
    assert len({k[1] for k in aws_prices}) >= 10
    for (region, name), price in aws_prices.items():
        if name.startswith("m7i") or name not in offered(moto_url, region):
            # a CPU-only type is no GPU offer; a type priced where EC2 does not offer it is none
            assert not [o for o in offers if (o.region, o.instance_type) == (region, name)]
            continue
        assert find(offers, "aws", region, name, spot=False).price == pytest.approx(price)
    h100 = find(offers, "aws", "us-east-1", "p5.4xlarge", spot=False)
    assert h100.gpu is not None and (h100.gpu.name, h100.gpu.count, h100.gpu.memory_gb) == ("H100", 1, 80)
    assert (h100.cpus, h100.memory_gb) == (16, 256)
    h200 = find(offers, "aws", "us-west-2", "p5en.48xlarge", spot=False)
    assert h200.gpu is not None and (h200.gpu.name, h200.gpu.count, h200.gpu.memory_gb) == ("H200", 8, 141)
    a10g = find(offers, "aws", "us-west-2", "g5.xlarge", spot=False)
    assert a10g.gpu is not None and (a10g.gpu.name, a10g.gpu.memory_gb) == ("A10G", 24)  # as sold
    assert find(offers, "aws", "us-east-1", "g6e.xlarge", spot=True).price > 0  # spot price history
    assert not [o for o in offers if o.backend == "aws" and o.region not in AWS_REGIONS]
    tokens = [r["token"] for r in recorded.requests if r["api"] == "pricing"]
    assert tokens.count(None) == len(AWS_REGIONS) and len(tokens) > len(AWS_REGIONS)  # paged
    filters = next(r["filters"] for r in recorded.requests if r["api"] == "pricing")
    assert (filters["operatingSystem"], filters["tenancy"], filters["preInstalledSw"]) == (
        "Linux",
        "Shared",
        "NA",
    )

    # Azure: Linux consumption prices (not Windows, not Low Priority), hardware from resource SKUs
    for (region, size, spot), price in recorded_azure_prices().items():
        if size == "Standard_D2s_v5" or (region, size) == ("westus3", "Standard_NC64as_T4_v3"):
            assert not [o for o in offers if (o.region, o.instance_type) == (region, size)]
            continue
        assert find(offers, "azure", region, size, spot).price == pytest.approx(price)
    nc = find(offers, "azure", "eastus", "Standard_NC40ads_H100_v5", spot=False)
    assert nc.gpu is not None and (nc.gpu.name, nc.gpu.count, nc.gpu.memory_gb, nc.cpus) == (
        "H100",
        1,
        94,
        40,
    )
    mi = find(offers, "azure", "westus3", "Standard_ND96isr_MI300X_v5", spot=True)
    assert mi.gpu is not None and (mi.gpu.name, mi.gpu.vendor, mi.gpu.count) == ("MI300X", "amd", 8)
    retail = [r for r in recorded.requests if r["api"] == "retail"]
    assert {r["skip"] for r in retail} >= {0, 10, 20}  # followed NextPageLink
    assert all("priceType eq 'Consumption'" in r["filter"] for r in retail)

    providers = read_meta(dest)["providers"]
    assert (
        providers["aws"]["regions"] == AWS_REGIONS and providers["azure"]["rows"] == report.refreshed["azure"]
    )
    line = describe_catalog(dest)
    assert "aws refreshed" in line and "azure refreshed" in line


@pytest.mark.slow  # moto + recorded price pages, 2-12 s
def test_a_cloud_without_credentials_keeps_its_rows(
    tmp_path: Path, moto_url: str, recorded: RecordedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AZURE_SUBSCRIPTION_ID", raising=False)
    dest = tmp_path / "catalog.csv"
    report = refresh_catalog(settings_for(moto_url, recorded, None), dest, SHIPPED_CATALOG, environ={})
    assert set(report.refreshed) == {"aws"}
    assert "no subscription" in report.skipped["azure"]
    shipped_azure = sorted(
        (o.region, o.instance_type, o.spot, o.price) for o in load_catalog() if o.backend == "azure"
    )
    kept = sorted(
        (o.region, o.instance_type, o.spot, o.price) for o in load_catalog(dest) if o.backend == "azure"
    )
    assert kept == shipped_azure
    line = describe_catalog(dest)
    assert "aws refreshed" in line and "azure shipped" in line


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ("Standard_ND96isr_H100_v5", ("H100", 80, "nvidia")),
        ("Standard_NC40ads_H100_v5", ("H100", 94, "nvidia")),
        ("Standard_ND96isr_H200_v5", ("H200", 141, "nvidia")),
        ("Standard_ND96isr_MI300X_v5", ("MI300X", 192, "amd")),
        ("Standard_NC24ads_A100_v4", ("A100", 80, "nvidia")),
        ("Standard_ND96asr_v4", ("A100", 40, "nvidia")),
        ("Standard_NV36ads_A10_v5", ("A10", 24, "nvidia")),
        ("Standard_NC6s_v3", ("V100", 16, "nvidia")),
        ("Standard_D2s_v5", None),
    ],
)
def test_gpu_model_from_the_size_name(size: str, expected: tuple[str, float, str] | None) -> None:
    assert gpu_model(size) == expected


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler.cli.main", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow  # moto + recorded price pages, 2-12 s
def test_cli_refresh_then_offers_use_the_refreshed_catalog(
    tmp_path: Path, moto_url: str, recorded: RecordedServer
) -> None:
    settings = tmp_path / "settings.yml"
    settings.write_text(
        "backends:\n  aws:\n    regions: [us-east-1]\n"
        f"    endpoint_url: {moto_url}\n    pricing_endpoint_url: {recorded.url}\n"
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TIDEGATE_", "AZURE_", "AWS_"))}
    env = {**base, **cloud.FAKE_ENV, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = cli(
        "offers", "--refresh", "--settings", str(settings), "--gpu", "H100", "-v", "--limit", "50", env=env
    )
    assert done.returncode == 0, done.stderr
    assert "warning: azure: no subscription" in done.stderr
    cached = tmp_path / "cache" / "tidegate" / "catalog.csv"
    assert cached.is_file() and "catalog refreshed (aws " in done.stderr
    price = recorded_aws_prices()[("us-east-1", "p5.4xlarge")]
    # offline offers (no settings) now answer from the refreshed file, and say when it was refreshed
    shown = cli("offers", "--gpu", "H100", "-v", "--limit", "50", "--backend", "aws", env=env)
    assert shown.returncode == 0, shown.stderr
    row = next(line for line in shown.stdout.splitlines() if "p5.4xlarge" in line and " no " in line)
    assert f"${price:g}" in row and "us-east-1" in row
    assert "eu-west-1" not in shown.stdout  # the shipped catalog's other AWS regions are replaced
    assert f"catalog: {cached} (aws refreshed " in shown.stderr


@pytest.mark.slow  # moto + recorded price pages, 2-12 s
def test_cli_refresh_without_any_credentials_says_so(tmp_path: Path) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TIDEGATE_", "AZURE_", "AWS_"))}
    env = {
        **base,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "HOME": str(tmp_path),
    }
    done = cli("offers", "--refresh", "--gpu", "H100", env=env)
    assert done.returncode == 1
    assert "error: no cloud refreshed: aws: no credentials found" in done.stderr
    assert "azure: no subscription" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "cache" / "tidegate" / "catalog.csv").exists()
