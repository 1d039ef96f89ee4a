"""How previews plug into the rest of tidegate: CLI options, settings, the desired set, `ps` rows.

Why a module of its own: `reconciler.previews.decision` decides, `reconciler.previews.pr_source` and
`reconciler.previews.github` do the I/O; what is left is glue the engine, the loop and the CLI call, kept
here so each of those call sites stays one line. Everything here is pure (argparse namespaces,
mappings and dataclasses in, values out).

Preview services join the production desired set under their own names (`<service>-pr-<N>`), each
built like any service (`desired.build_desired`) but from its PR's checkout and at its PR's head
revision. The engine then treats them like every other service: a push rolls them (the spec hash
moved), and a preview missing from the next decision is deleted by the ordinary prune.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from reconciler.config import SpotPolicy, parse_duration
from reconciler.engine.desired import DesiredSet, build_desired
from reconciler.previews.decision import DEFAULT_TTL, PreviewDecision, PreviewSettings, previews_by_pr


class PreviewSettingsError(ValueError):
    """A preview option or settings-file entry that cannot be used as given."""


# -- settings ------------------------------------------------------------------------------------


def add_preview_options(parser: argparse.ArgumentParser) -> None:
    """`tidegate up` options for previews (all optional; the settings file may set them too)."""
    g = parser.add_argument_group("pull-request previews")
    g.add_argument("--previews", action="store_true", default=None, help="preview open PRs as <service>-pr-<N>")
    g.add_argument("--preview-label", metavar="LABEL", help="only PRs carrying this label get previews")
    g.add_argument("--preview-max", type=int, metavar="N", help="at most N preview services at once (default 5)")
    g.add_argument("--preview-ttl", metavar="DURATION", help="remove a preview this long after the last push (24h)")
    g.add_argument("--preview-replicas", type=int, metavar="N", help="replicas per preview at most (default 1)")
    g.add_argument(
        "--preview-allow-forks", action="store_true", default=None, help="also preview PRs from forks (never given secrets)"
    )


_FILE_KEYS = {
    "enabled", "max_replicas_per_preview", "spot_policy", "max_concurrent", "ttl", "required_label",
    "allow_forks", "allow_unverified", "fork_secrets",
}


def preview_settings(args: argparse.Namespace | None = None, section: Mapping[str, Any] | None = None) -> PreviewSettings:
    """PreviewSettings from the settings file's `previews:` section overlaid by CLI options.

    File keys: enabled, max_replicas_per_preview, spot_policy (spot|on-demand|auto|null to keep the
    service's), max_concurrent, ttl (300, "90m", "24h"), required_label, allow_forks,
    allow_unverified, fork_secrets."""
    s = PreviewSettings()
    data = dict(section or {})
    unknown = sorted(set(data) - _FILE_KEYS)
    if unknown:
        raise PreviewSettingsError(f"unknown previews setting(s): {', '.join(unknown)} (known: {', '.join(sorted(_FILE_KEYS))})")
    try:
        if "enabled" in data:
            s = replace(s, enabled=bool(data["enabled"]))
        if "max_replicas_per_preview" in data:
            s = replace(s, max_replicas_per_preview=_count(data["max_replicas_per_preview"], "max_replicas_per_preview"))
        if "spot_policy" in data:
            s = replace(s, spot_policy=None if data["spot_policy"] is None else SpotPolicy(str(data["spot_policy"])))
        if "max_concurrent" in data:
            s = replace(s, max_concurrent=_count(data["max_concurrent"], "max_concurrent"))
        if "ttl" in data:
            s = replace(s, ttl_seconds=float(parse_duration(data["ttl"])))
        if "required_label" in data:
            s = replace(s, required_label=str(data["required_label"]) if data["required_label"] else None)
        if "allow_forks" in data:
            s = replace(s, allow_forks=bool(data["allow_forks"]))
        if "allow_unverified" in data:
            s = replace(s, allow_unverified=bool(data["allow_unverified"]))
        if "fork_secrets" in data:
            s = replace(s, fork_secrets=bool(data["fork_secrets"]))
        if args is not None:
            s = _from_args(s, args)
    except ValueError as e:
        if isinstance(e, PreviewSettingsError):
            raise
        raise PreviewSettingsError(f"previews: {e}") from e
    return s


def _from_args(s: PreviewSettings, args: argparse.Namespace) -> PreviewSettings:
    if getattr(args, "previews", None):
        s = replace(s, enabled=True)
    if getattr(args, "preview_label", None):
        s = replace(s, required_label=args.preview_label)
    if getattr(args, "preview_max", None) is not None:
        s = replace(s, max_concurrent=_count(args.preview_max, "--preview-max"))
    if getattr(args, "preview_ttl", None):
        s = replace(s, ttl_seconds=float(parse_duration(args.preview_ttl)))
    if getattr(args, "preview_replicas", None) is not None:
        s = replace(s, max_replicas_per_preview=_count(args.preview_replicas, "--preview-replicas"))
    if getattr(args, "preview_allow_forks", None):
        s = replace(s, allow_forks=True)
    return s


def _count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PreviewSettingsError(f"{what} must be a whole number >= 0, got {value!r}")
    return value


# -- the desired set -----------------------------------------------------------------------------


def preview_desired(
    decision: PreviewDecision,
    workdirs: Mapping[int, Path],
    *,
    env: Mapping[str, str],
    salt: str,
    backends: Sequence[str],
    ships_workdir: Callable[[str], bool],
    domain: str = "localhost",
    default_backend: str = "local",
) -> DesiredSet:
    """The decided previews as desired services: per PR, built from that PR's checkout
    (`workdirs[pr]`, e.g. `PullRequestSnapshot.checkouts[pr].root`) at its head revision. Bare-KEY
    env entries withheld by the decision are already gone from the configs, so `env` is safe to pass."""
    services: dict[str, Any] = {}
    blocked: dict[str, str] = {}
    for number, (sha, load) in sorted(previews_by_pr(decision).items()):
        root = workdirs.get(number)
        if root is None:
            for name in load.services:
                blocked[name] = f"PR #{number} has no checkout"
            continue
        ds = build_desired(
            load, revision=sha, workdir=str(Path(root).absolute()), env=env, salt=salt,
            backends=backends, ships_workdir=ships_workdir, domain=domain, default_backend=default_backend,
            trusted=False,
        )
        # bound to the PR's checkout: the production set's revision and folder are not theirs
        services.update({n: replace(d, at=d.files_at(ds.at)) for n, d in ds.services.items()})
        blocked.update(ds.blocked)
    return DesiredSet(services=services, blocked=blocked)


def merge_desired(base: DesiredSet, previews: DesiredSet) -> DesiredSet:
    """Production plus previews. A production service always wins a name (the decision already
    refuses clashing names; this is the second lock)."""
    services = dict(previews.services)
    services.update(base.services)
    blocked = {k: v for k, v in previews.blocked.items() if k not in base.services}
    blocked.update(base.blocked)
    return replace(base, services=services, blocked=blocked)


# -- `tidegate ps` -------------------------------------------------------------------------------


def ps_rows(decision: Mapping[str, Any], now: float) -> list[list[str]]:
    """Rows for a PREVIEW / PR / HEAD / EXPIRES / NOTE table from `pr_source.read_decision(...)`:
    running previews first, then every PR without one and why."""
    rows: list[list[str]] = []
    for p in decision.get("previews") or []:
        expires = p.get("expires_at")
        left = "-" if expires is None else _left(float(expires) - now)
        note = f"model {p['model']}" if p.get("model") else ""
        if p.get("withheld_env"):
            note = (note + "; " if note else "") + "secrets withheld: " + ", ".join(p["withheld_env"])
        rows.append([str(p.get("name")), f"#{p.get('pr')}", str(p.get("head_sha") or "-")[:12], left, note])
    for r in decision.get("rejected") or []:
        what = f"{r.get('service')}: " if r.get("service") else ""
        rows.append(["-", f"#{r.get('pr')}", "-", "-", f"{r.get('reason')}: {what}{r.get('detail')}"])
    return rows


PS_HEADERS = ["PREVIEW", "PR", "HEAD", "EXPIRES IN", "NOTE"]


def _left(seconds: float) -> str:
    if seconds <= 0:
        return "expired"
    if seconds >= 3600:
        return f"{seconds / 3600:.0f}h"
    return f"{max(1, round(seconds / 60))}m"


__all__ = [
    "DEFAULT_TTL",
    "PS_HEADERS",
    "PreviewSettingsError",
    "add_preview_options",
    "merge_desired",
    "preview_desired",
    "preview_settings",
    "ps_rows",
]
