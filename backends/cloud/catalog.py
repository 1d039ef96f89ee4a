"""The price catalog and offer matching: which instance types exist where, at what hourly price.

Why this module exists: `tidegate offers` and every backend's `offers()` must answer offline (no
cloud credentials, no network) and the same way for every cloud. Prices therefore come from a CSV
that ships with the package (`backends/cloud/data/catalog.csv`, in the column layout of dstack's
`gpuhunt` v2 catalogs plus a `provider` column); cloud APIs only refine it (GPU facts, live spot
prices) where they are reachable. `gpuhunt` itself (MPL-2.0) downloads its catalogs at run time and
ships none. `tidegate offers --refresh` rebuilds the catalog from the clouds' own APIs instead
(backends/refresh.py) into the user's cache directory, which then wins over the shipped file.

Matching follows dstack's resource grammar as resolved into `backends.base.Requirements`; it is
pure (values in, values out) so the table is tested without any SDK.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from backends.base import GpuInfo, Offer, Requirements
from tidegate.fsio import write_atomic

SHIPPED_CATALOG = Path(__file__).parent / "data" / "catalog.csv"
FIELDS = (
    "provider",
    "instance_name",
    "location",
    "price",
    "cpu",
    "memory",
    "gpu_count",
    "gpu_name",
    "gpu_memory",
    "spot",
    "disk_size",
    "gpu_vendor",
)


class CatalogError(Exception):
    """The catalog file is missing or malformed, or a refresh is impossible here."""


def cache_catalog_path(environ: dict[str, str] | None = None) -> Path:
    """Where `refresh_catalog` writes by default: $XDG_CACHE_HOME/tidegate/catalog.csv."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tidegate" / "catalog.csv"


def resolve_catalog_path(explicit: str | Path | None, environ: dict[str, str] | None = None) -> Path:
    """An explicit path wins, then a refreshed cache, then the catalog shipped with the package."""
    if explicit:
        return Path(explicit)
    cached = cache_catalog_path(environ)
    return cached if cached.is_file() else SHIPPED_CATALOG


def _offer_from_row(row: dict[str, str]) -> Offer:
    gpu_count = int(row.get("gpu_count") or 0)
    gpu: GpuInfo | None = None
    if gpu_count > 0 and row.get("gpu_name"):
        gpu = GpuInfo(
            name=row["gpu_name"],
            memory_gb=float(row.get("gpu_memory") or 0),
            count=gpu_count,
            vendor=(row.get("gpu_vendor") or "nvidia").lower(),
        )
    return Offer(
        backend=row["provider"],
        region=row["location"],
        instance_type=row["instance_name"],
        cpus=int(float(row["cpu"])),
        memory_gb=float(row["memory"]),
        gpu=gpu,
        spot=row["spot"].strip().lower() in ("true", "1", "yes"),
        price=float(row["price"]),
        disk_gb=float(row.get("disk_size") or 0),
    )


def load_catalog(path: str | Path | None = None) -> list[Offer]:
    """Every row of the catalog as an `Offer` (backend = provider)."""
    target = Path(path) if path else SHIPPED_CATALOG
    try:
        with target.open(newline="", encoding="utf-8") as fh:
            return [_offer_from_row(row) for row in csv.DictReader(fh)]
    except (OSError, KeyError, ValueError) as e:
        raise CatalogError(f"cannot read catalog {target}: {e}") from e


def gpu_matches(offer: Offer, requirements: Requirements) -> bool:
    want = requirements.gpu
    if want is None:
        return True
    if offer.gpu is None:
        return want.count.min is not None and want.count.min <= 0 and not want.names
    gpu = offer.gpu
    if want.names and gpu.name.lower() not in {n.lower() for n in want.names}:
        return False
    if want.vendor and gpu.vendor.lower() != want.vendor.lower():
        return False
    return want.memory_gb.contains(gpu.memory_gb) and want.count.contains(gpu.count)


def matches(offer: Offer, requirements: Requirements) -> bool:
    """Whether one offer satisfies the requirements (dstack semantics, see module docstring)."""
    r = requirements
    if r.backends and offer.backend not in r.backends:
        return False
    if r.regions and offer.region not in r.regions:
        return False
    if r.instance_types and offer.instance_type not in r.instance_types:
        return False
    if r.spot_policy == "spot" and not offer.spot:
        return False
    if r.spot_policy == "on-demand" and offer.spot:
        return False
    if r.max_price is not None and offer.price > r.max_price:
        return False
    if not r.cpus.contains(offer.cpus) or not r.memory_gb.contains(offer.memory_gb):
        return False
    # Disk is a volume sized at launch (EBS / managed disk), so any disk range is satisfiable.
    return gpu_matches(offer, r)


def sort_key(offer: Offer) -> tuple[float, str, str, str, bool]:
    return (offer.price, offer.backend, offer.region, offer.instance_type, offer.spot)


def select_offers(offers: Iterable[Offer], requirements: Requirements) -> list[Offer]:
    """The matching offers, cheapest first (ties broken by name so output is stable)."""
    return sorted((o for o in offers if matches(o, requirements)), key=sort_key)


def merge_offers(*groups: Sequence[Offer]) -> list[Offer]:
    """All offers of several backends, cheapest first."""
    return sorted((o for g in groups for o in g), key=sort_key)


def read_rows(path: Path) -> list[dict[str, str]]:
    """The catalog's rows as they are in the file (for merging a refresh into it)."""
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            return [{k: row.get(k) or "" for k in FIELDS} for row in csv.DictReader(fh)]
    except OSError as e:
        raise CatalogError(f"cannot read catalog {path}: {e}") from e


def meta_path(catalog: Path) -> Path:
    """Where a refreshed catalog records when and from what it was refreshed."""
    return catalog.with_name(catalog.stem + ".meta.json")


def read_meta(catalog: Path) -> dict[str, Any]:
    """{"providers": {"aws": {"refreshed_at": ISO time, "regions": [...], "rows": N}, ...}}, or {}."""
    try:
        raw = json.loads(meta_path(catalog).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return raw if isinstance(raw, dict) and isinstance(raw.get("providers"), dict) else {}


def describe_catalog(path: Path) -> str:
    """One line for users: which catalog answers and when each cloud's part was refreshed."""
    if path == SHIPPED_CATALOG:
        return f"catalog: shipped with tidegate ({path.name}); `tidegate offers --refresh` rebuilds it"
    providers = read_meta(path).get("providers", {})
    parts = [
        f"{name} refreshed {info.get('refreshed_at', '?')}" if info.get("refreshed_at") else f"{name} shipped"
        for name, info in sorted(providers.items())
        if isinstance(info, dict)
    ]
    return f"catalog: {path}" + (f" ({', '.join(parts)})" if parts else "")


def write_catalog(rows: Iterable[dict[str, str]], dest: Path, meta: dict[str, Any] | None = None) -> int:
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=list(FIELDS))
    writer.writeheader()
    count = 0
    for row in rows:
        writer.writerow(row)
        count += 1
    write_atomic(dest, buf.getvalue().encode("utf-8"), mode=0o644)  # a shared, readable data file
    if meta is not None:
        write_atomic(
            meta_path(dest), (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode(), mode=0o644
        )
    return count
