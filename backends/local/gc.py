"""Housekeeping of the local backend's small files: lock files, venv locks and kept logs that
belong to nothing live any more.

Why: every replica id ever created leaves `<root>/.locks/<id>.lock` (the flock that serialises its
create/delete), every venv ever built leaves `.venvs/.<name>.lock`, and every deleted replica
leaves its last log lines in `.logs/<id>.log`. A long-running installation rolls many times a
day, so without this they pile up without bound.

A lock file is removed only while nobody holds it (taken with LOCK_NB first, and only if the path
still names the file locked) and only when what it guards is gone and it is older than a grace
period; `local_host.file_lock` re-checks the same after acquiring, so a lock removed in between
is simply taken again on a new file.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

GRACE = 3600.0  # seconds a lock file must be unused before it is litter
KEEP_LOGS = 50  # kept logs of deleted replicas (newest first)


def remove_unheld_lock(path: Path) -> bool:
    """Unlink `path` if no process holds its flock; False when held or already gone."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        try:
            if os.fstat(fd).st_ino != os.stat(path).st_ino:
                return False
        except FileNotFoundError:
            return False
        path.unlink()
        return True
    finally:
        os.close(fd)


def _old(path: Path, now: float, grace: float) -> bool:
    try:
        return now - path.stat().st_mtime >= grace
    except OSError:
        return False


def collect_local_litter(root: Path, now: float | None = None, grace: float = GRACE, keep_logs: int = KEEP_LOGS) -> list[Path]:
    """Remove what belongs to nothing live under a local backend's root; return what was removed."""
    now = time.time() if now is None else now
    removed: list[Path] = []
    locks = root / ".locks"
    if locks.is_dir():
        for lock in locks.glob("*.lock"):
            replica = root / lock.name[: -len(".lock")]
            if not replica.exists() and _old(lock, now, grace) and remove_unheld_lock(lock):
                removed.append(lock)
    venvs = root / ".venvs"
    if venvs.is_dir():
        for lock in venvs.glob(".*.lock"):
            venv = venvs / lock.name[1 : -len(".lock")]
            if not venv.exists() and _old(lock, now, grace) and remove_unheld_lock(lock):
                removed.append(lock)
    kept = root / ".logs"
    if kept.is_dir():
        logs = []
        for log in kept.glob("*.log"):
            try:
                logs.append((log.stat().st_mtime, log))
            except OSError:
                continue
        for _mtime, log in sorted(logs, reverse=True)[keep_logs:]:
            if (root / log.name[: -len(".log")]).exists():
                continue  # that id runs again: its kept log is still its history
            try:
                log.unlink()
            except OSError:
                continue
            removed.append(log)
    return removed
