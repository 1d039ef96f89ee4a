"""`tidegate plan`: what `apply` would change, as text, JSON or a markdown PR comment.

Why a module of its own: the plan command grew the GitHub loop's needs — `--format markdown` for
the PR comment (`reconciler.render.plan_markdown`) and `--baseline DIR`, which plans the checkout against
the desired set of another folder (the PR's base branch) instead of the state directory: in CI
there is no production state to read, and GitOps says production runs the base branch, so the
difference between the two desired sets is exactly what the PR changes.

Exit codes follow terraform's -detailed-exitcode: 0 nothing to do, 2 changes, 1 errors.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from reconciler.cli.output import say
from reconciler.cli.settings import SettingsError, add_common_options, build_settings
from reconciler.engine.reconcile import Snapshot
from reconciler.source.checkout import SourceError
from reconciler.state.errors import ReconcilerError

EXIT_ERROR = 1


class PlanFormat(StrEnum):
    TEXT = "text"
    JSON = "json"
    MARKDOWN = "markdown"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("plan", help="show what apply would change (exit 0 none, 2 changes, 1 errors)")
    add_common_options(p, gateway=True)
    p.add_argument(
        "--format", choices=[f.value for f in PlanFormat], default=None,
        help="text (default), json, or markdown (a PR comment)",
    )
    p.add_argument("--json", action="store_true", help="same as --format json")
    p.add_argument(
        "--baseline", metavar="DIR",
        help="plan against the configs in DIR (e.g. the PR's base branch) instead of the state directory",
    )
    p.set_defaults(func=cmd_plan)


def output_format(args: argparse.Namespace) -> PlanFormat:
    if args.format:
        return PlanFormat(args.format)
    return PlanFormat.JSON if args.json else PlanFormat.TEXT


def baseline_revision(folder: Path) -> str:
    """The commit checked out in `folder` when it is a git work tree, else a name for the folder."""
    try:
        out = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return f"baseline:{folder.name}"
    return out.stdout.strip() or f"baseline:{folder.name}"


def cmd_plan(args: argparse.Namespace) -> int:
    fmt = output_format(args)
    # The checkout goes to a scratch folder: plan never writes the state dir (a running `up` owns
    # it; its source.json, clone and revisions are not plan's to change).
    with tempfile.TemporaryDirectory(prefix="tidegate-plan-") as scratch:
        return _plan(args, fmt, Path(scratch))


def _plan(args: argparse.Namespace, fmt: PlanFormat, scratch: Path) -> int:
    from reconciler.cli import runtime
    from reconciler.render.plan_markdown import baseline_plan, render
    from reconciler.render.plan_output import plan_json, render_plan

    try:
        settings = build_settings(args)
        source = runtime.require_source(settings, scratch=scratch)
        checkout = source.current()
        if args.baseline is not None and not Path(args.baseline).is_dir():
            raise runtime.RuntimeError_(f"--baseline {args.baseline}: not a directory")
        engine = runtime.build_engine(settings, read_only=True)  # plan works beside a running `up`
        result = engine.plan(runtime.to_snapshot(checkout))
        if args.baseline is not None and result.desired is not None:
            base_dir = Path(args.baseline).resolve()
            base = engine.desired(Snapshot(baseline_revision(base_dir), base_dir, settings.path))
            against_base = baseline_plan(base, result.desired)
            result = replace(result, plan=against_base, notes=against_base.notes)
    except (SettingsError, SourceError, ReconcilerError, runtime.RuntimeError_) as e:
        say(f"error: {e}", stream=sys.stderr, style="red")
        return EXIT_ERROR
    if fmt is PlanFormat.JSON:
        print(json.dumps(plan_json(result), indent=2))
    elif fmt is PlanFormat.MARKDOWN:
        sys.stdout.write(render(result))
    else:
        print(render_plan(result))
    return int(result.exit_code)
