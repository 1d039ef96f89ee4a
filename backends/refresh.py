"""`tidegate offers --refresh`: rebuild the offers catalog from the clouds' own APIs.

Why this module exists: it is the one place that knows both clouds' refreshers (backends/aws/
catalog_refresh.py, backends/azure/catalog_refresh.py) and merges what they return into one
catalog file, like backends.registry does for the backends themselves.

Only clouds with credentials are refreshed: AWS when boto3 finds credentials; Azure when a
subscription is known (settings `subscription_id`, else `AZURE_SUBSCRIPTION_ID`) and
azure-identity's `DefaultAzureCredential` gives a token. A cloud that is not refreshed keeps its
rows of the current catalog (the refreshed one, else the shipped one) and is named with the
reason. Regions: the settings file's, else the ones the current catalog has for that cloud.

Where: `$XDG_CACHE_HOME/tidegate/catalog.csv` (default `~/.cache/tidegate/catalog.csv`) beside
`catalog.meta.json` (per cloud: refresh time, regions, rows), unless `--catalog FILE` or the
settings file's `catalog:` names another file. Prices are not deployment state, so the file lives with the user, not in a state
directory: `offers`, `plan` and `up` of that user read it (`catalog:` in the settings file or
`TIDEGATE_CATALOG` points another user at it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backends.cloud.catalog import CatalogError, read_meta, read_rows, write_catalog
from backends.settings import AwsSettings, AzureSettings, CloudSettings

log = logging.getLogger("backends.refresh")


@dataclass
class RefreshReport:
    dest: Path
    refreshed: dict[str, int] = field(default_factory=dict)  # cloud -> rows written
    skipped: dict[str, str] = field(default_factory=dict)  # cloud -> why not refreshed
    total: int = 0


def _regions(rows: list[dict[str, str]], provider: str, configured: list[str] | None) -> list[str]:
    if configured:
        return list(configured)
    return sorted({r["location"] for r in rows if r["provider"] == provider})


def _aws(settings: AwsSettings | None, regions: list[str], clients: Any) -> list[dict[str, str]]:
    from backends.aws.catalog_refresh import aws_rows, boto_clients

    if clients is None:
        endpoint = settings.endpoint_url if settings else None
        pricing = settings.pricing_endpoint_url if settings else None
        clients = boto_clients(endpoint, pricing)
    return aws_rows(regions, clients)


def refresh_catalog(
    settings: CloudSettings,
    dest: Path,
    current: Path,
    *,
    environ: Mapping[str, str] | None = None,
    aws_clients: Any = None,
    azure_credential: Any = None,
) -> RefreshReport:
    """Refresh every credentialed cloud's rows into `dest`; the others keep `current`'s rows.
    Raises CatalogError when no cloud could be refreshed (nothing is written then)."""
    from backends.aws.catalog_refresh import AwsCatalogError
    from backends.azure.catalog_refresh import AzureCatalogError

    env = os.environ if environ is None else environ
    old_rows = read_rows(current)
    providers = dict(read_meta(current).get("providers", {}))
    report = RefreshReport(dest)
    fresh: dict[str, list[dict[str, str]]] = {}
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    aws, azure = settings.get("aws"), settings.get("azure")
    for name in ("aws", "azure"):
        try:
            if name == "aws":
                conf = aws if isinstance(aws, AwsSettings) else None
                regions = _regions(old_rows, "aws", conf.regions if conf else None)
                rows = _aws(conf, regions, aws_clients)
            else:
                az = azure if isinstance(azure, AzureSettings) else None
                regions = _regions(old_rows, "azure", az.locations if az else None)
                from backends.azure.catalog_refresh import refresh_azure

                rows = refresh_azure(az, regions, azure_credential, env)
        except (AwsCatalogError, AzureCatalogError) as e:
            report.skipped[name] = str(e)
            continue
        if not rows:
            report.skipped[name] = (
                f"{name}: the APIs returned no GPU offers for {', '.join(regions)}; kept as it was"
            )
            continue
        fresh[name] = rows
        report.refreshed[name] = len(rows)
        providers[name] = {"refreshed_at": now, "regions": regions, "rows": len(rows)}
    if not fresh:
        raise CatalogError("no cloud refreshed: " + "; ".join(report.skipped.values()))
    merged = [r for r in old_rows if r["provider"] not in fresh] + [
        r for rows in fresh.values() for r in rows
    ]
    for name in {r["provider"] for r in merged} - set(providers):
        providers[name] = {"refreshed_at": None, "source": str(current)}
    report.total = write_catalog(merged, dest, {"providers": providers})
    return report
