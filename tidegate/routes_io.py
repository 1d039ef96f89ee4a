"""Reading and publishing `routes.json`, kept apart from the pure models in tidegate.routes.

Why a module of its own: the routes models are imported by pure decision code (plan, view); the
atomic write pulls in file-system helpers, which must not reach those modules.
"""

from __future__ import annotations

import json
from pathlib import Path

from tidegate.fsio import write_atomic
from tidegate.routes import ROUTES_FILE, RoutesSnapshot


def write_snapshot(state_dir: Path, snapshot: RoutesSnapshot) -> None:
    """Atomically replace `routes.json` (temp file + fsync + replace + directory fsync)."""
    write_atomic(state_dir / ROUTES_FILE, snapshot.model_dump_json(indent=2).encode())


def read_snapshot(state_dir: Path) -> RoutesSnapshot:
    """The published snapshot, or an empty one when none was published yet."""
    path = state_dir / ROUTES_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return RoutesSnapshot()
    return RoutesSnapshot.model_validate(json.loads(raw))
