"""Reading and publishing `routes.json`, kept apart from the pure models in tidegate.routes.

Why a module of its own: the routes models are imported by pure decision code (plan, view); the
atomic write pulls in file-system helpers, which must not reach those modules.

A routes.json of a newer `schema_version` is refused (RoutesSchemaError, a ValueError): a reader
keeps what it had, and the reconciler never rewrites it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tidegate.fsio import write_atomic
from tidegate.routes import ROUTES_FILE, SCHEMA_VERSION, RoutesSnapshot


class RoutesSchemaError(ValueError):
    """routes.json was written by a newer tidegate: neither read nor rewritten."""


def _refuse_newer(path: Path, data: Any) -> None:
    version = data.get("schema_version", SCHEMA_VERSION) if isinstance(data, dict) else None
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise RoutesSchemaError(
            f"{path} has schema_version {version!r}; this tidegate reads up to {SCHEMA_VERSION} and will not rewrite it"
        )


def check_schema(path: Path) -> None:
    """Raise RoutesSchemaError when `path` carries a schema_version newer than ours. An unreadable
    file is not refused here: it is only ever the writer's own output, so it is replaced."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return
    _refuse_newer(path, data)


def write_snapshot(state_dir: Path, snapshot: RoutesSnapshot | bytes) -> None:
    """Atomically replace `routes.json` (temp file + fsync + replace + directory fsync)."""
    body = snapshot if isinstance(snapshot, bytes) else snapshot.model_dump_json(indent=2).encode()
    write_atomic(state_dir / ROUTES_FILE, body)


def read_snapshot(state_dir: Path) -> RoutesSnapshot:
    """The published snapshot, or an empty one when none was published yet. A newer schema is
    refused (RoutesSchemaError) so a reader keeps what it had."""
    path = state_dir / ROUTES_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return RoutesSnapshot()
    data = json.loads(raw)
    _refuse_newer(path, data)
    return RoutesSnapshot.model_validate(data)
