"""Garbage-collect the small files that belong to nothing live, on start and then periodically.

Why: a long-running `up` accumulates litter that nothing else removes: a lock file per replica id
ever created and per venv ever built, the kept logs of deleted replicas (local backend, see
backends.local.gc), temp files and stale lock files of interrupted git fetches, and temp files of
writes interrupted by a kill (`.<name>.<random>.tmp` beside state.json and routes.json). Each is
small; together they grow without bound. What is live is never touched: a lock file someone
holds, a replica's own folder, a clone's objects and refs.
"""

from __future__ import annotations

import time
from pathlib import Path

from backends.base import BackendRegistry
from reconciler.source.checkout import REPOS_DIR

TEMP_GRACE = 3600.0  # an interrupted atomic write's temp file older than this is litter
# What an interrupted `git fetch` leaves in a bare repository: loose-object and pack temp files,
# and lock files that make the next fetch fail ("Unable to create '…lock': File exists").
_GIT_LITTER = ("tmp_obj_*", "tmp_pack_*", "tmp_idx_*", "tmp_rev_*", "*.lock")


def collect_git_litter(repos_dir: Path) -> list[Path]:
    """Remove what interrupted fetches left in the clones under `repos_dir`. Only call it when no
    fetch runs in them (the reconcile loop fetches on its own thread, and calls this there)."""
    removed: list[Path] = []
    if not repos_dir.is_dir():
        return removed
    for repo in repos_dir.iterdir():
        if not (repo / "HEAD").exists():
            continue
        for pattern in _GIT_LITTER:
            for path in repo.rglob(pattern):
                if path.is_file() and not path.is_symlink():
                    try:
                        path.unlink()
                    except OSError:
                        continue
                    removed.append(path)
    return removed



def stale_temp_files(state_dir: Path, now: float, grace: float = TEMP_GRACE) -> list[Path]:
    """Remove `.*.tmp` files left in the state dir by writes a kill interrupted."""
    removed: list[Path] = []
    if not state_dir.is_dir():
        return removed
    for path in state_dir.glob(".*.tmp"):
        try:
            if path.is_file() and now - path.stat().st_mtime >= grace:
                path.unlink()
                removed.append(path)
        except OSError:
            continue
    return removed


def collect_litter(state_dir: Path, backends: BackendRegistry, now: float | None = None) -> list[Path]:
    """One housekeeping round over the state dir, its clones and every backend that keeps files."""
    now = time.time() if now is None else now
    removed = stale_temp_files(state_dir, now)
    removed += collect_git_litter(state_dir / REPOS_DIR)
    for backend in backends.all():
        removed += backend.collect_garbage()
    return removed
