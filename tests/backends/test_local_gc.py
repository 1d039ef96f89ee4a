"""Housekeeping of small files: litter that belongs to nothing live is collected, live files stay."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from backends.base import BackendRegistry
from backends.local.backend import LocalBackend
from backends.local.gc import collect_local_litter, remove_unheld_lock
from reconciler.engine.housekeeping import collect_litter

OLD = time.time() - 7200


def _touch(path: Path, mtime: float = OLD) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")
    os.utime(path, (mtime, mtime))
    return path


def test_local_litter_is_collected_and_live_files_stay(tmp_path: Path) -> None:
    root = tmp_path / "replicas"
    (root / "web-aaaa-0").mkdir(parents=True)  # a live replica
    live_lock = _touch(root / ".locks" / "web-aaaa-0.lock")
    dead_locks = [_touch(root / ".locks" / f"web-{i:04x}-0.lock") for i in range(30)]
    young_lock = _touch(root / ".locks" / "web-new-0.lock", time.time())  # being created right now
    (root / ".venvs" / "abc-py3.11").mkdir(parents=True)
    live_venv_lock = _touch(root / ".venvs" / ".abc-py3.11.lock")
    dead_venv_lock = _touch(root / ".venvs" / ".gone-py3.11.lock")
    logs = [_touch(root / ".logs" / f"old-{i}.log", OLD - i) for i in range(60)]
    held = _touch(root / ".locks" / "web-held-0.lock")
    with open(held, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        removed = set(collect_local_litter(root, keep_logs=50))
    assert removed == {*dead_locks, dead_venv_lock, *logs[50:]}
    for kept in (live_lock, young_lock, live_venv_lock, held, *logs[:50]):
        assert kept.exists(), kept


def test_a_lock_file_in_use_is_never_removed(tmp_path: Path) -> None:
    lock = _touch(tmp_path / "x.lock")
    with open(lock, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        assert not remove_unheld_lock(lock) and lock.exists()
    assert remove_unheld_lock(lock) and not lock.exists()


def test_housekeeping_collects_git_and_temp_litter_across_the_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "state"
    repo = state / "repos" / "0123456789abcdef"
    (repo / "objects" / "ab").mkdir(parents=True)
    (repo / "HEAD").write_text("ref: refs/heads/main\n")
    obj = _touch(repo / "objects" / "ab" / "cdef0123")
    litter = [
        _touch(repo / "objects" / "ab" / "tmp_obj_XyZ"),
        _touch(repo / "objects" / "pack" / "tmp_pack_123"),
        _touch(repo / "refs" / "tidegate" / "main.lock"),
        _touch(state / ".state.json.abc123.tmp"),
        _touch(state / "replicas" / ".locks" / "gone-0.lock"),
    ]
    fresh_tmp = _touch(state / ".routes.json.zz.tmp", time.time())  # a write in progress
    registry = BackendRegistry({"local": LocalBackend(state / "replicas", owner="tg-test")})
    assert set(collect_litter(state, registry)) == set(litter)
    assert obj.exists() and fresh_tmp.exists() and (repo / "HEAD").exists()
