"""Catalog rows for Azure from Azure's own APIs: the Retail Prices API for prices and the
subscription's resource SKUs for the hardware.

Why a module of its own: `tidegate offers --refresh` rebuilds the offers catalog where credentials
allow (backends/refresh.py drives it); this part speaks Azure's vocabulary. Rows are the catalog's
columns (backends.cloud.catalog.FIELDS), provider `azure`.

- Prices: `GET https://prices.azure.com/api/retail/prices` with an OData `$filter` (Virtual
  Machines, Consumption, one region at a time), following `NextPageLink` to the last page. Linux
  only (a `productName` ending in "Windows" is skipped), "Low Priority" skipped, a `skuName` ending
  in "Spot" is the spot row. The API is public (no credential).
- Hardware: `resource_skus.list(filter="location eq '<region>'")` (azure-mgmt-compute): VM sizes
  with a `GPUs` capability the subscription may use (no `NotAvailableForSubscription`), with their
  vCPUs, memory and local disk. SKUs do not name the GPU: the size name does (`_H100_`, `_A10_`,
  ...; `GPU_BY_SERIES` for the few that do not), and the GPU memory per model is in `GPU_MEMORY`.
  Fractional A10 sizes (NVads A10 v5 below 36 vCPUs: a slice of one GPU) are left out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import httpx

from backends.settings import AzureSettings

RETAIL_PRICES_URL = "https://prices.azure.com/api/retail/prices"
RETAIL_API_VERSION = "2023-01-01-preview"
MAX_PAGES = 1000  # a runaway NextPageLink loop stops here
# GPU memory (GB) per model and Azure series where one model comes in several sizes
GPU_MEMORY = {"H100": 80, "H200": 141, "MI300X": 192, "A100": 80, "A10": 24, "T4": 16, "V100": 16}
GPU_MEMORY_BY_SERIES = {r"^Standard_NC\d+ad[a-z]*_H100_v5$": 94, r"^Standard_ND96asr_v4$": 40}
GPU_BY_SERIES = {r"^Standard_ND\d+a?sr_v4$": "A100", r"^Standard_N[CD]\d+[a-z]*_v[23]$": "V100"}
_GPU_TOKEN = re.compile(r"_(H100|H200|MI300X|A100|A10|T4|V100|L40S|L4)_")


class AzureCatalogError(Exception):
    """An API call failed; the message says which."""


def gpu_model(size: str) -> tuple[str, float, str] | None:
    """(GPU name, memory GB, vendor) of an Azure VM size name, None when it cannot be told."""
    match = _GPU_TOKEN.search(size)
    name = match.group(1) if match else None
    if name is None:
        name = next((gpu for pattern, gpu in GPU_BY_SERIES.items() if re.match(pattern, size)), None)
    if name is None:
        return None
    memory = next((m for pattern, m in GPU_MEMORY_BY_SERIES.items() if re.match(pattern, size)), None)
    return name, float(memory or GPU_MEMORY.get(name, 0)), "amd" if name.startswith("MI") else "nvidia"


def retail_items(client: httpx.Client, url: str, region: str) -> Iterator[dict[str, Any]]:
    """Every Retail Prices item of Virtual Machines consumption in `region`, page after page."""
    odata = (
        f"serviceName eq 'Virtual Machines' and priceType eq 'Consumption' and armRegionName eq '{region}'"
    )
    next_url: str | None = url
    params: dict[str, str] | None = {"api-version": RETAIL_API_VERSION, "$filter": odata}
    for _ in range(MAX_PAGES):
        if not next_url:
            return
        try:
            response = client.get(next_url, params=params)
            response.raise_for_status()
            page = response.json()
        except (httpx.HTTPError, ValueError) as e:
            raise AzureCatalogError(f"azure retail prices ({region}): {type(e).__name__}: {e}") from e
        yield from page.get("Items", [])
        next_url, params = page.get("NextPageLink"), None  # the link carries the query
    raise AzureCatalogError(f"azure retail prices ({region}): more than {MAX_PAGES} pages")


def linux_prices(items: Iterable[dict[str, Any]]) -> dict[tuple[str, bool], float]:
    """(VM size, spot) -> USD per hour for Linux consumption items."""
    prices: dict[tuple[str, bool], float] = {}
    for item in items:
        sku, product = str(item.get("skuName", "")), str(item.get("productName", ""))
        if item.get("type") != "Consumption" or item.get("unitOfMeasure") != "1 Hour":
            continue
        if product.endswith("Windows") or "Low Priority" in sku or item.get("currencyCode", "USD") != "USD":
            continue
        price = float(item.get("retailPrice") or 0)
        key = (str(item.get("armSkuName", "")), sku.endswith("Spot"))
        if price > 0 and key[0]:
            prices[key] = min(price, prices.get(key, price))
    return prices


def gpu_sizes(compute: Any, region: str) -> dict[str, dict[str, float]]:
    """VM size -> {vCPUs, MemoryGB, GPUs, disk GB} for the GPU sizes the subscription may use."""
    out: dict[str, dict[str, float]] = {}
    for sku in compute.resource_skus.list(filter=f"location eq '{region}'"):
        if sku.resource_type != "virtualMachines":
            continue
        if sku.locations and region.lower() not in {str(x).lower() for x in sku.locations}:
            continue
        if any(_restricts(r, region) for r in sku.restrictions or []):
            continue
        caps = {str(c.name): str(c.value) for c in sku.capabilities or []}
        try:
            facts = {
                "cpu": float(caps.get("vCPUs", 0)),
                "memory": float(caps.get("MemoryGB", 0)),
                "gpus": float(caps.get("GPUs", 0)),
                "disk": float(caps.get("MaxResourceVolumeMB", 0)) / 1024,
            }
        except ValueError:
            continue
        if facts["gpus"] >= 1 and facts["cpu"] > 0:
            out[str(sku.name)] = facts
    return out


def _restricts(restriction: Any, region: str) -> bool:
    """A `NotAvailableForSubscription` restriction of the whole region (zone restrictions leave
    other zones usable)."""
    if restriction.reason_code != "NotAvailableForSubscription" or restriction.type == "Zone":
        return False
    info = restriction.restriction_info
    values = {str(v).lower() for v in (info.locations if info is not None else None) or []}
    return not values or region.lower() in values


def _fractional(size: str, facts: dict[str, float]) -> bool:
    return "_A10_v5" in size and facts["cpu"] < 36


def azure_rows(regions: Iterable[str], compute: Any, client: httpx.Client, url: str) -> list[dict[str, str]]:
    """Catalog rows (on-demand and spot) for every GPU VM size of `regions` with a Linux price."""
    from azure.core.exceptions import AzureError

    rows: list[dict[str, str]] = []
    for region in regions:
        try:
            sizes = gpu_sizes(compute, region)
        except AzureError as e:
            raise AzureCatalogError(f"azure {region} resource SKUs: {type(e).__name__}: {e}") from e
        prices = linux_prices(retail_items(client, url, region))
        for (size, spot), price in sorted(prices.items()):
            facts = sizes.get(size)
            model = gpu_model(size)
            if facts is None or model is None or _fractional(size, facts):
                continue
            name, memory, vendor = model
            rows.append(
                {
                    "provider": "azure",
                    "instance_name": size,
                    "location": region,
                    "price": f"{price:g}",
                    "cpu": f"{facts['cpu']:g}",
                    "memory": f"{facts['memory']:g}",
                    "gpu_count": f"{facts['gpus']:g}",
                    "gpu_name": name,
                    "gpu_memory": f"{memory:g}",
                    "spot": str(spot),
                    "disk_size": f"{round(facts['disk']):g}",
                    "gpu_vendor": vendor,
                }
            )
    return rows


def refresh_azure(
    settings: AzureSettings | None, regions: list[str], credential: Any, environ: Mapping[str, str]
) -> list[dict[str, str]]:
    from azure.mgmt.compute import ComputeManagementClient

    from backends.azure.arm import ARM_SCOPE, _allow_http_policy

    subscription = settings.subscription_id if settings else environ.get("AZURE_SUBSCRIPTION_ID")
    if not subscription:
        raise AzureCatalogError(
            "azure: no subscription (a settings file with an azure backend, or AZURE_SUBSCRIPTION_ID); not refreshed"
        )
    if credential is None:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
        try:
            credential.get_token(ARM_SCOPE)
        except Exception as e:  # azure-identity raises its own CredentialUnavailableError family
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise AzureCatalogError(
                f"azure: no credentials (DefaultAzureCredential: {first}); not refreshed"
            ) from e
    kwargs: dict[str, Any] = {}
    if settings and settings.base_url:
        kwargs = {"base_url": settings.base_url, "credential_scopes": [ARM_SCOPE]}
        if settings.base_url.startswith("http://"):
            kwargs["per_call_policies"] = [_allow_http_policy()]
    compute = ComputeManagementClient(credential, subscription, **kwargs)
    url = (settings.retail_prices_url if settings else None) or RETAIL_PRICES_URL
    with httpx.Client(timeout=60, follow_redirects=True) as client:
        return azure_rows(regions, compute, client, url)
