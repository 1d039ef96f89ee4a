"""What is wrong with a state directory, as `ps` tells it: each problem one line naming the file.

Why: the running `up` holds its actions when its state cannot be saved, but a full disk is also
where it could write that down. So `ps` (another process) looks for itself, read-only: is
state.json readable (else the restore command), is there space left on the state's filesystem
and is it writable at all (mounted read-only), are tokens.json and routes.json readable.
"""

from __future__ import annotations

import os
from pathlib import Path

from gateway.access.tokens import TokenError, load_records
from reconciler.engine.persist import DISK_FULL_BELOW
from reconciler.state.errors import StateError
from reconciler.state.store import StateStore
from tidegate.fsio import free_bytes
from tidegate.routes_io import read_snapshot


def state_problems(state_dir: Path) -> list[str]:
    """Problems that stop the reconciler from saving its state (it then takes no action)."""
    problems: list[str] = []
    try:
        StateStore(state_dir).load()
    except StateError as e:
        problems.append(str(e))
    free = free_bytes(state_dir)
    if free is not None and free < DISK_FULL_BELOW:
        problems.append(f"disk full at {state_dir} ({free} bytes free)")
    try:
        if os.statvfs(state_dir).f_flag & os.ST_RDONLY:
            problems.append(f"read-only file system at {state_dir}")
    except OSError:
        pass
    return problems


def serving_problems(state_dir: Path) -> list[str]:
    """Problems of the files the gateway serves from (it keeps the last good copy of each)."""
    problems: list[str] = []
    try:
        load_records(state_dir)
    except TokenError as e:
        problems.append(f"{e} (the gateway keeps the tokens it loaded before)")
    try:
        read_snapshot(state_dir)
    except (OSError, ValueError) as e:
        problems.append(f"{e} (the gateway keeps the routes it loaded before)")
    return problems
