"""What the runtime commands share: exit codes, settings with the state-inside-the-repo warning,
the one-line error, and the env file `up` records so `ps`/`logs` in another terminal can mask.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from reconciler.cli.output import say
from reconciler.cli.settings import Settings, build_settings, state_inside_repo
from tidegate.fsio import write_json_atomic

log = logging.getLogger("tidegate")

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2


def command_settings(args: argparse.Namespace) -> Settings:
    settings = build_settings(args)
    warning = state_inside_repo(settings)
    if warning:
        say(f"warning: {warning}", stream=sys.stderr, style="yellow")
    return settings


# --- masking replica output in another process ------------------------------------------------
# `ps` and `logs` show what a replica printed, masked with the values of the secrets it received.
# The state holds only their salted hashes, so these commands re-derive the values from their own
# environment and env file (a candidate counts only when its hash matches). By default the env
# file is the one `up`/`apply` was started with: they record its *path* (never its contents) in
# ENV_FILE_RECORD, so `tidegate ps` in a second terminal masks without repeating --env-file.

ENV_FILE_RECORD = "env-file.json"


def add_mask_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--env-file",
        metavar="FILE",
        help="values for bare KEY env entries, to mask them in replica output (default: the file `up` was given)",
    )


def record_env_file(state_dir: Path, env_file: Path | None) -> None:
    """Remember the path of the env file `up`/`apply` runs with (for `ps`/`logs` masking)."""
    path = state_dir / ENV_FILE_RECORD
    try:
        if env_file is None:
            path.unlink(missing_ok=True)
        else:
            write_json_atomic(path, {"schema_version": 1, "path": str(Path(env_file).absolute())}, mode=0o600)
    except OSError as e:  # only a convenience for `ps`/`logs`: never stop `up` over it
        log.warning("cannot record the env file path in %s: %s", path, e)


def mask_settings(args: argparse.Namespace) -> Settings:
    """Settings for `ps`/`logs`: with no --env-file, the env file `up` recorded (when readable)."""
    if getattr(args, "env_file", None) is None:
        state = build_settings(args).state_dir
        try:
            recorded = json.loads((state / ENV_FILE_RECORD).read_text()).get("path")
        except (OSError, ValueError, AttributeError):
            recorded = None
        if isinstance(recorded, str) and Path(recorded).is_file() and os.access(recorded, os.R_OK):
            args = argparse.Namespace(**{**vars(args), "env_file": recorded})
    return build_settings(args)


def fail(message: str) -> int:
    say(f"error: {message}", stream=sys.stderr, style="red")
    return EXIT_ERROR
