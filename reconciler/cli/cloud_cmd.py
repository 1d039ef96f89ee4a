"""`tidegate offers` and `tidegate gc`: what the clouds would cost, and sweeping what we leaked.

Why this module exists: both commands read the backends settings file (`--settings FILE`, else
`TIDEGATE_SETTINGS`) and talk to cloud backends only, so they live apart from the reconcile loop.
`offers` answers offline from the shipped catalog when no settings file names a cloud (no SDK is
imported, no network touched); with one, each configured backend answers (refined by the cloud APIs
where reachable). `gc` deletes owned replicas unknown to `<state>/state.json` after a grace period.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from backends.base import Backend, BackendError, Offer, Range, Requirements
from tidegate.etcd import is_etcd_url
from tidegate.state_dir import STATE_ENV, choose_state_dir

DEFAULT_LIMIT = 20
DEFAULT_GRACE = 600.0


def register(subparsers: Any) -> None:
    offers = subparsers.add_parser("offers", help="list cloud offers (cheapest first) for a GPU or a service")
    offers.add_argument("service", nargs="?", help="a service name or .dstack.yml file in --repo-dir")
    offers.add_argument("--config", help="path to a .dstack.yml whose resources and profile to match")
    offers.add_argument("--repo-dir", default=".", help="config tree to look SERVICE up in (default: .)")
    offers.add_argument("--gpu", help="dstack GPU spec: 80GB, A100:2, 24GB..80GB, H100,A100:8")
    offers.add_argument("--cpu", help="CPU count or range (2.., 8..32)")
    offers.add_argument("--memory", help="memory range (16GB..)")
    offers.add_argument("--spot-policy", choices=["spot", "on-demand", "auto"], default=None)
    offers.add_argument("--max-price", type=float)
    offers.add_argument("--region", action="append", default=[], help="repeatable")
    offers.add_argument("--backend", action="append", default=[], help="aws | azure (repeatable)")
    offers.add_argument("--instance-type", action="append", default=[], help="repeatable")
    offers.add_argument("--settings", help="backends settings YAML (default: $TIDEGATE_SETTINGS)")
    offers.add_argument("--catalog", help="price catalog CSV (default: refreshed cache, else shipped)")
    offers.add_argument(
        "--limit", type=int, default=DEFAULT_LIMIT, help=f"rows to show (default {DEFAULT_LIMIT})"
    )
    offers.add_argument("--json", action="store_true", help="machine-readable output")
    offers.add_argument("-v", "--verbose", action="store_true", help="also show the instance type")
    offers.add_argument(
        "--refresh",
        action="store_true",
        help="rebuild the catalog from the clouds' APIs (credentialed clouds only; written to --catalog or the user cache)",
    )
    offers.set_defaults(func=run_offers)

    gc = subparsers.add_parser(
        "gc", help="delete cloud replicas carrying our owner tag that the state does not know"
    )
    gc.add_argument("--state", help="state directory (default: $TIDEGATE_STATE or ./state)")
    gc.add_argument("--settings", help="backends settings YAML (default: $TIDEGATE_SETTINGS)")
    gc.add_argument("--grace", type=float, default=DEFAULT_GRACE, help="seconds an orphan must be seen first")
    gc.add_argument("--dry-run", action="store_true", help="only report what would be deleted")
    gc.add_argument("--assume-empty-state", action="store_true", help="sweep even without a state.json")
    gc.set_defaults(func=run_gc)


# ---- offers ------------------------------------------------------------------------------------
OFFER_BACKENDS = ("aws", "azure")


class OffersError(Exception):
    """A flag or config `tidegate offers` cannot use; the message is for the user as it is."""


def _validated(model: Any, text: str, flag: str) -> Any:
    """`model.model_validate(text)`; a pydantic error becomes one readable line naming the flag."""
    from pydantic import ValidationError

    try:
        return model.model_validate(text)
    except ValidationError as e:
        why = "; ".join(str(err["msg"]).removeprefix("Value error, ") for err in e.errors(include_url=False))
        raise OffersError(f"{flag} {text!r}: {why}") from e


def _range(text: str | None, *, memory: bool) -> Range | None:
    if not text:
        return None
    from reconciler.config.resources import IntRange, MemoryRange

    model = MemoryRange if memory else IntRange
    return _validated(model, text, "--memory" if memory else "--cpu").to_requirement()  # type: ignore[no-any-return]


def requirements_from_args(args: argparse.Namespace) -> Requirements:
    """Requirements from a service config (--config / SERVICE) overlaid with the command's flags."""
    base = Requirements()
    if args.config or args.service:
        base = _service_requirements(args)
    gpu = base.gpu
    if args.gpu:
        from reconciler.config.resources import GpuSpec

        gpu = _validated(GpuSpec, args.gpu, "--gpu").to_requirement()
    unknown = [b for b in args.backend if b not in OFFER_BACKENDS]
    if unknown:
        raise OffersError(
            f"--backend {unknown[0]!r}: unknown backend; offers come from {', '.join(OFFER_BACKENDS)}"
            " (`local` runs on this machine and has no price list)"
        )
    return Requirements(
        cpus=_range(args.cpu, memory=False) or base.cpus,
        memory_gb=_range(args.memory, memory=True) or base.memory_gb,
        disk_gb=base.disk_gb,
        gpu=gpu,
        spot_policy=args.spot_policy or (base.spot_policy if (args.config or args.service) else "auto"),
        max_price=args.max_price if args.max_price is not None else base.max_price,
        regions=tuple(args.region) or base.regions,
        instance_types=tuple(args.instance_type) or base.instance_types,
        backends=tuple(args.backend) or base.backends,
    )


def _service_requirements(args: argparse.Namespace) -> Requirements:
    from reconciler.config.loader import load_tree

    if args.config:
        path = Path(args.config).resolve()
        if not path.is_file():
            raise OffersError(f"--config {args.config}: no such file")
        root, target = path.parent, path.name
        result = load_tree(root, path.name)  # this file only (and the folder's profiles)
    else:
        root, target = Path(args.repo_dir).resolve(), str(args.service)
        if not root.is_dir():
            raise OffersError(f"--repo-dir {args.repo_dir}: no such directory")
        result = load_tree(root)
    for name, loaded in result.services.items():
        if target in (name, loaded.path, Path(loaded.path).name):
            return loaded.config.requirements()
    mine = [d for d in result.errors if not args.config or d.path == target] or result.errors
    problems = "\n".join(d.format() for d in mine) or f"no service {target!r} under {root}"
    raise OffersError(problems)


def _backends_for_offers(args: argparse.Namespace) -> Sequence[Backend] | None:
    path = args.settings or os.environ.get("TIDEGATE_SETTINGS")
    if not path:
        return None
    from backends.registry import build_backends
    from reconciler.cli.settings import load_cloud_settings

    settings = load_cloud_settings(path, os.environ)
    if args.catalog:
        settings = settings.model_copy(update={"catalog": args.catalog})
    return build_backends(settings, owner="offers", state_dir=".")


def _catalog_in_use(args: argparse.Namespace) -> str | None:
    """The catalog the offers came from: --catalog, else the settings file's (when one is used)."""
    path = args.settings or os.environ.get("TIDEGATE_SETTINGS")
    if args.catalog or not path:
        return str(args.catalog) if args.catalog else None
    from reconciler.cli.settings import load_cloud_settings

    catalog: str | None = load_cloud_settings(path, os.environ).catalog
    return catalog


def find_offers(args: argparse.Namespace, requirements: Requirements) -> list[Offer]:
    from backends.cloud.catalog import load_catalog, merge_offers, resolve_catalog_path, select_offers

    backends = _backends_for_offers(args)
    if not backends:  # offline: the whole catalog, no SDK, no network
        return select_offers(load_catalog(resolve_catalog_path(args.catalog)), requirements)
    groups = []
    for backend in backends:
        try:
            groups.append(list(backend.offers(requirements)))
        except BackendError as e:
            print(f"warning: {backend.name}: {e}", file=sys.stderr)
    return merge_offers(*groups)


OFFER_COLUMNS = ["BACKEND", "REGION", "RESOURCES", "SPOT", "PRICE"]


def offer_rows(offers: list[Offer], *, verbose: bool = False) -> list[list[str]]:
    rows = []
    for o in offers:
        row = [o.backend, o.region, o.resources_label(), "yes" if o.spot else "no", f"${o.price:g}"]
        if verbose:
            row.insert(2, o.instance_type)
        rows.append(row)
    return rows


def refresh(args: argparse.Namespace) -> int:
    """`offers --refresh`: rebuild the catalog from the clouds' APIs (backends/refresh.py)."""
    from backends.cloud.catalog import CatalogError, cache_catalog_path, resolve_catalog_path
    from backends.refresh import refresh_catalog
    from backends.settings import CloudSettings, SettingsError
    from reconciler.cli.settings import SettingsError as FileError
    from reconciler.cli.settings import load_cloud_settings

    path = args.settings or os.environ.get("TIDEGATE_SETTINGS")
    try:
        settings = load_cloud_settings(path, os.environ) if path else CloudSettings()
    except (SettingsError, FileError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    # where the catalog is read from is where it is refreshed: --catalog, else the settings file's
    # `catalog:` (TIDEGATE_CATALOG), else the user cache
    dest = Path(args.catalog or settings.catalog or cache_catalog_path())
    current = dest if dest.is_file() else resolve_catalog_path(None)
    try:
        report = refresh_catalog(settings, dest, current)
    except CatalogError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for why in report.skipped.values():
        print(f"warning: {why}", file=sys.stderr)
    done = ", ".join(f"{name} {rows} rows" for name, rows in report.refreshed.items())
    print(f"catalog refreshed ({done}): {report.total} offers written to {dest}", file=sys.stderr)
    return 0


def run_offers(args: argparse.Namespace) -> int:
    from backends.cloud.catalog import describe_catalog, resolve_catalog_path
    from reconciler.cli.output import print_table

    if args.refresh and refresh(args) != 0:
        return 1
    try:
        requirements = requirements_from_args(args)
        offers = find_offers(args, requirements)
    except (ValueError, BackendError, Exception) as e:  # a CLI boundary: report, don't trace
        if isinstance(e, KeyboardInterrupt):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    shown = offers[: max(args.limit, 0)]
    if args.json:
        json.dump(
            [
                {
                    "backend": o.backend,
                    "region": o.region,
                    "instance_type": o.instance_type,
                    "resources": o.resources_label(),
                    "spot": o.spot,
                    "price": o.price,
                }
                for o in shown
            ],
            sys.stdout,
            indent=2,
        )
        sys.stdout.write("\n")
        return 0
    if not shown:
        print("no offers match", file=sys.stderr)
        return 1
    columns = [*OFFER_COLUMNS[:2], "INSTANCE", *OFFER_COLUMNS[2:]] if args.verbose else OFFER_COLUMNS
    print_table(columns, offer_rows(shown, verbose=args.verbose), status_column=None)
    print(describe_catalog(resolve_catalog_path(_catalog_in_use(args))), file=sys.stderr)
    if len(offers) > len(shown):
        print(f"... {len(offers) - len(shown)} more (--limit)", file=sys.stderr)
    return 0


# ---- gc ------------------------------------------------------------------------------------------
def _owner(state_dir: Path) -> str | None:
    try:
        raw = json.loads((state_dir / "installation.json").read_text(encoding="utf-8"))
        return str(raw["id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run_gc(args: argparse.Namespace) -> int:
    from backends.cloud.orphans import OrphanSweeper, read_known_replica_ids
    from backends.registry import build_backends
    from backends.settings import SettingsError
    from reconciler.cli.settings import SettingsError as FileError
    from reconciler.cli.settings import load_cloud_settings

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if is_etcd_url(args.state or os.environ.get(STATE_ENV)):
        print("gc: state on etcd is not supported by gc yet; run it with --state on a copy of the state dir", file=sys.stderr)
        return 2
    state_dir = choose_state_dir(args.state, os.environ)
    owner = _owner(state_dir)
    if owner is None:
        print(f"gc: no installation in {state_dir}: nothing of ours can exist", file=sys.stderr)
        return 0
    known = read_known_replica_ids(state_dir / "state.json")
    if known is None:
        if not args.assume_empty_state:
            print(
                f"gc: {state_dir / 'state.json'} is missing or unreadable; refusing to treat every replica "
                "as an orphan (pass --assume-empty-state to sweep anyway)",
                file=sys.stderr,
            )
            return 2
        known = set()
    try:
        settings = load_cloud_settings(args.settings or os.environ.get("TIDEGATE_SETTINGS"), os.environ)
        backends = build_backends(settings, owner, state_dir)
    except (SettingsError, FileError) as e:
        print(f"gc: {e}", file=sys.stderr)
        return 2
    if not backends:
        print("gc: no cloud backends configured (--settings)", file=sys.stderr)
        return 0
    sweeper = OrphanSweeper(backends, owner, grace=args.grace, seen_file=state_dir / "gc-seen.json")
    report = sweeper.sweep(known, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    for info in report.deleted:
        print(f"{verb} {info.backend} {info.replica_id} ({info.handle})")
    for info in report.waiting:
        print(
            f"waiting {info.backend} {info.replica_id} ({info.handle}): inside the {args.grace:g}s grace period"
        )
    for group in report.groups:
        print(f"deleted network resources: {group}")
    for error in report.errors:
        print(f"error: {error}", file=sys.stderr)
    return 1 if report.errors else 0
