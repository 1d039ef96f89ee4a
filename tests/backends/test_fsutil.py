"""backends/fsutil: atomic file and directory writes (real files in tmp_path)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from tidegate.fsio import build_dir_atomic, fsync_dir, write_atomic, write_json_atomic


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize(
    ("before", "data"),
    [
        pytest.param(None, b"new", id="creates"),
        pytest.param(b"old contents that are longer", b"new", id="replaces-whole-file"),
        pytest.param(b"old", b"", id="empty"),
    ],
)
def test_write_atomic_leaves_exactly_the_new_bytes(tmp_path: Path, before: bytes | None, data: bytes) -> None:
    path = tmp_path / "doc.json"
    if before is not None:
        path.write_bytes(before)
    write_atomic(path, data)
    assert path.read_bytes() == data
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        pytest.param(None, 0o600, id="default-is-private"),
        pytest.param(0o644, 0o644, id="readable"),
        pytest.param(0o600, 0o600, id="explicit-private"),
    ],
)
def test_write_atomic_mode(tmp_path: Path, mode: int | None, expected: int) -> None:
    path = tmp_path / "f"
    write_atomic(path, b"x", mode=mode)
    assert stat.S_IMODE(path.stat().st_mode) == expected


def test_write_atomic_creates_parents_unless_told_not_to(tmp_path: Path) -> None:
    write_atomic(tmp_path / "a" / "b" / "f", b"x")
    assert (tmp_path / "a" / "b" / "f").read_bytes() == b"x"
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "gone" / "f", b"x", mkdir=False)
    assert not (tmp_path / "gone").exists()


def test_write_atomic_failure_keeps_old_state_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.mkdir()
    (target / "child").write_text("keep")  # replacing a non-empty directory with a file fails
    with pytest.raises(OSError):
        write_atomic(target, b"x")
    assert (target / "child").read_text() == "keep"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        pytest.param({}, b'{"b": 1, "a": "\\u00e9"}', id="compact-ascii"),
        pytest.param({"sort_keys": True}, b'{"a": "\\u00e9", "b": 1}', id="sorted"),
        pytest.param({"indent": 1, "sort_keys": True}, b'{\n "a": "\\u00e9",\n "b": 1\n}', id="indented"),
    ],
)
def test_write_json_atomic_bytes(tmp_path: Path, kwargs: dict[str, bool | int], expected: bytes) -> None:
    path = tmp_path / "x.json"
    write_json_atomic(path, {"b": 1, "a": "é"}, **kwargs)  # type: ignore[arg-type]
    assert path.read_bytes() == expected
    assert json.loads(expected) == {"a": "é", "b": 1}


def test_fsync_dir_on_a_real_directory(tmp_path: Path) -> None:
    fsync_dir(tmp_path)  # no error; a missing one raises
    with pytest.raises(FileNotFoundError):
        fsync_dir(tmp_path / "missing")


def test_build_dir_atomic_builds_then_renames(tmp_path: Path) -> None:
    final = tmp_path / "rev" / "abc"
    build_dir_atomic(final, lambda tmp: (tmp / "f").write_text("1"))
    assert (final / "f").read_text() == "1"
    assert _leftovers(final.parent) == []


def test_build_dir_atomic_fill_error_leaves_nothing(tmp_path: Path) -> None:
    final = tmp_path / "abc"

    def boom(tmp: Path) -> None:
        (tmp / "half").write_text("x")
        raise ValueError("fill failed")

    with pytest.raises(ValueError, match="fill failed"):
        build_dir_atomic(final, boom)
    assert list(tmp_path.iterdir()) == []


def test_build_dir_atomic_losing_the_race_keeps_the_winner(tmp_path: Path) -> None:
    final = tmp_path / "abc"
    final.mkdir()
    (final / "winner").write_text("first")
    build_dir_atomic(final, lambda tmp: (tmp / "loser").write_text("second"))  # no error
    assert sorted(p.name for p in final.iterdir()) == ["winner"]
    assert _leftovers(tmp_path) == []
