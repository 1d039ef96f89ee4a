"""Source: real git repos (bare remote + pushes) and a real folder; no network."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from reconciler.cli.settings import SettingsError, parse_env_file
from reconciler.source.checkout import (
    GitSource,
    SourceError,
    WorktreeSource,
    make_source,
    prune_revisions,
    read_source,
    redact_url,
    tree_hash,
)
from tests.support.git_repo import bare_remote, commit_push


@pytest.fixture
def remote(tmp_path: Path) -> tuple[Path, Path]:
    """A bare remote and a working clone to push from."""
    return bare_remote(tmp_path)


def test_git_source_follows_pushes(remote: tuple[Path, Path], tmp_path: Path) -> None:
    bare, work = remote
    sha1 = commit_push(work, {"svc/.dstack.yml": "type: service\n", ".dstackignore": "x\n"})
    state = tmp_path / "state"
    src = GitSource(f"file://{bare}", "main", state, config_path="svc")

    first = src.current()
    assert first.revision == sha1
    assert first.config_path == "svc"
    assert (first.root / "svc/.dstack.yml").read_text() == "type: service\n"
    assert read_source(state)["revision"] == sha1

    assert src.current() == first  # nothing new: same checkout, no re-extraction

    sha2 = commit_push(work, {"svc/.dstack.yml": None, "other.dstack.yml": "name: b\n"})
    second = src.current()
    assert second.revision == sha2 != sha1
    assert not (second.root / "svc/.dstack.yml").exists()
    assert (second.root / "other.dstack.yml").exists()
    assert (first.root / "svc/.dstack.yml").exists()  # old revision kept (last N)


def test_git_source_accepts_a_plain_path(remote: tuple[Path, Path], tmp_path: Path) -> None:
    _bare, work = remote
    sha = commit_push(work, {"a.txt": "a"})
    assert GitSource(str(work), "main", tmp_path / "s").current().revision == sha


@pytest.mark.parametrize(
    ("branch", "expect"),
    [
        pytest.param("nope", "nope", id="missing-branch"),
    ],
)
def test_git_source_errors_are_clear(remote: tuple[Path, Path], tmp_path: Path, branch: str, expect: str) -> None:
    bare, work = remote
    commit_push(work, {"a.txt": "a"})
    state = tmp_path / "state"
    with pytest.raises(SourceError, match=expect):
        GitSource(f"file://{bare}", branch, state).current()
    assert read_source(state)["error"]


def test_unreachable_remote_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="cannot fetch"):
        GitSource(f"file://{tmp_path}/missing.git", "main", tmp_path / "s").current()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        pytest.param("https://user:s3cret@example.com/r.git", "https://example.com/r.git", id="userinfo"),
        pytest.param("https://tok@example.com:8443/r.git", "https://example.com:8443/r.git", id="token-port"),
        pytest.param("https://example.com/r.git", "https://example.com/r.git", id="clean"),
        pytest.param("git@github.com:o/r.git", "git@github.com:o/r.git", id="scp"),
        pytest.param("/srv/repo", "/srv/repo", id="path"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_worktree_revision_is_a_content_hash(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / ".git").mkdir(parents=True)
    (tree / "a.dstack.yml").write_text("one")
    (tree / ".git" / "HEAD").write_text("ignored")
    src = WorktreeSource(tree, tmp_path / "state")
    first = src.current()
    assert first.revision.startswith("worktree-")
    assert (first.root / "a.dstack.yml").read_text() == "one"
    assert not (first.root / ".git").exists()
    (tree / ".git" / "HEAD").write_text("changed")
    assert src.current().revision == first.revision
    (tree / "a.dstack.yml").write_text("two")
    assert src.current().revision != first.revision


def test_worktree_watch_calls_back_on_save(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    src = WorktreeSource(tree, tmp_path / "state")
    changed = threading.Event()
    stop = threading.Event()
    thread = src.watch(changed.set, stop)
    try:
        # watchfiles needs a moment to register the inotify watch; write until it reports.
        for i in range(40):
            (tree / "svc.dstack.yml").write_text(f"v{i}")
            if changed.wait(0.25):
                break
        assert changed.is_set()
    finally:
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive()


def test_prune_keeps_newest_and_protected(tmp_path: Path) -> None:
    import os

    for i in range(8):
        d = tmp_path / f"rev{i}"
        d.mkdir()
        os.utime(d, (1000 + i, 1000 + i))
    removed = prune_revisions(tmp_path, keep=3, protect={"rev0"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rev0", "rev5", "rev6", "rev7"]
    assert sorted(removed) == ["rev1", "rev2", "rev3", "rev4"]


def test_make_source_watch_needs_a_folder(tmp_path: Path) -> None:
    with pytest.raises(SourceError):
        make_source("https://example.com/r.git", "main", tmp_path, None, watch=True)
    assert isinstance(make_source(str(tmp_path), "main", tmp_path / "s", None, watch=True), WorktreeSource)
    assert tree_hash(tmp_path) == tree_hash(tmp_path)


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        pytest.param("A=1\n# c\n\nexport B='two'\nC=\"x=y\"\n", {"A": "1", "B": "two", "C": "x=y"}, id="forms"),
        pytest.param("", {}, id="empty"),
    ],
)
def test_parse_env_file(text: str, expect: dict[str, str]) -> None:
    assert parse_env_file(text) == expect


def test_parse_env_file_never_echoes_a_bad_line() -> None:
    with pytest.raises(SettingsError) as e:
        parse_env_file("hunter2-secret-without-equals\n")
    assert "hunter2" not in str(e.value)


def test_revisions_still_deployed_are_never_pruned(remote: tuple[Path, Path], tmp_path: Path) -> None:
    import json

    _bare, work = remote
    state = tmp_path / "state"
    src = GitSource(str(work), "main", state, keep=1)
    kept = commit_push(work, {"a.txt": "0"})
    src.current()
    (state / "state.json").write_text(json.dumps({"services": {"web": {"revision": kept}}}))
    for i in range(1, 4):
        commit_push(work, {"a.txt": str(i)})
        latest = src.current().revision
    assert sorted(p.name for p in (state / "revisions").iterdir()) == sorted({kept, latest})


def test_a_commit_with_an_empty_tree_gives_an_empty_checkout(remote: tuple[Path, Path], tmp_path: Path) -> None:
    """Deleting every file is a legal commit: the source yields an empty tree (the engine then
    refuses to prune without --allow-empty) instead of failing every pass."""
    bare, work = remote
    commit_push(work, {"a.dstack.yml": "type: service\n"})
    src = GitSource(f"file://{bare}", "main", tmp_path / "state")
    assert (src.current().root / "a.dstack.yml").exists()
    sha = commit_push(work, {"a.dstack.yml": None}, "remove everything")
    empty = src.current()
    assert empty.revision == sha
    assert empty.root.is_dir() and not any(empty.root.iterdir())
