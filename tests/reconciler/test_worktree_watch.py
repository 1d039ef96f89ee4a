"""`--watch`: what git ignores, `.dstackignore`d data and editor droppings neither change the
revision nor reach its snapshot, and the watcher does not wake for them; bursts are debounced."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import pytest

from reconciler.source.checkout import WorktreeSource, watch_folder, worktree_ignore

CONFIG = "type: service\ncommands: [python3 -m http.server 8000]\nport: 8000\n"


def tree(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "data").mkdir(parents=True)
    (root / "web.dstack.yml").write_text(CONFIG)
    (root / ".gitignore").write_text("*.log\nbuild/\n")
    (root / ".dstackignore").write_text("data/big.bin\n")
    (root / "sub").mkdir()
    (root / "sub" / ".gitignore").write_text("local.txt\n")
    return root


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(".web.dstack.yml.swp", id="vim-swap"),
        pytest.param("web.dstack.yml~", id="backup"),
        pytest.param(".#web.dstack.yml", id="emacs-lock"),
        pytest.param("4913", id="vim-probe"),
        pytest.param("server.log", id="gitignored"),
        pytest.param("build/out.txt", id="gitignored-folder"),
        pytest.param("sub/local.txt", id="nested-gitignore"),
        pytest.param("data/big.bin", id="dstackignored"),
    ],
)
def test_ignored_files_change_nothing(tmp_path: Path, name: str) -> None:
    root = tree(tmp_path)
    source = WorktreeSource(root, tmp_path / "state")
    before = source.current()
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_bytes(b"x" * 4096)
    after = source.current()
    assert after.revision == before.revision
    assert not (after.root / name).exists()


def test_a_real_change_is_a_new_revision_without_the_ignored_data(tmp_path: Path) -> None:
    root = tree(tmp_path)
    (root / "data" / "big.bin").write_bytes(b"0" * 1_000_000)
    (root / "data" / "small.txt").write_text("kept")
    source = WorktreeSource(root, tmp_path / "state")
    first = source.current()
    (root / "app.py").write_text("print('hi')\n")
    second = source.current()
    assert second.revision != first.revision
    assert (second.root / "app.py").exists() and (second.root / "data" / "small.txt").exists()
    assert not (second.root / "data" / "big.bin").exists()
    snapshot_bytes = sum(p.stat().st_size for p in (tmp_path / "state").rglob("*") if p.is_file())
    assert snapshot_bytes < 100_000


def test_the_ignore_matches_folders_and_files(tmp_path: Path) -> None:
    root = tree(tmp_path)
    (root / "build").mkdir()
    ignore = worktree_ignore(root)
    assert ignore(str(root), ["build", "web.dstack.yml", "x.log", "a.swp", "data"]) == {
        "build",
        "x.log",
        "a.swp",
    }
    assert ignore(str(root / "sub"), ["local.txt", "kept.txt"]) == {"local.txt"}


@pytest.mark.slow
def test_the_watcher_ignores_droppings_and_debounces_a_burst(tmp_path: Path) -> None:
    root = tree(tmp_path)
    calls: list[float] = []
    stop = threading.Event()
    thread = watch_folder(
        root, lambda: calls.append(time.monotonic()), stop, "t", ignore=worktree_ignore(root), quiet_ms=300
    )
    try:
        time.sleep(0.5)  # the watch is registered
        for i in range(5):
            (root / ".web.dstack.yml.swp").write_text(str(i))
            (root / "web.dstack.yml~").write_text(str(i))
            (root / "x.log").write_text(str(i))
        time.sleep(1.0)
        assert calls == [], "droppings and ignored files must not wake the reconciler"
        writes: list[float] = []
        for i in range(10):  # 10 saves in ~1 s
            (root / "web.dstack.yml").write_text(CONFIG + f"# {i}\n")
            writes.append(time.monotonic())
            time.sleep(0.1)
        deadline = time.monotonic() + 5
        while not calls and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        # One wake-up for the burst (two at most: the watch may split it once). A loaded machine
        # may stretch the saves themselves: a pause over the 300 ms quiet time between two saves,
        # or a burst longer than the 1.5 s batch cap, ends a batch by the watcher's own rules, so
        # each such pause or cap is allowed one more wake-up (not the watcher's fault).
        gaps = [b - a for a, b in itertools.pairwise(writes)]
        allowed = 2 + sum(g >= 0.25 for g in gaps) + int((writes[-1] - writes[0]) / 1.5)
        assert 1 <= len(calls) <= allowed, (calls, gaps)
        assert len(calls) < len(writes), "a burst of saves must be debounced"
    finally:
        stop.set()
        thread.join(5)
