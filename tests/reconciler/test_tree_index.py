"""The tree index (git ls-tree's paths and blob ids, reconciler.config.discovery.TreeIndex) stands
for reading the checkout folder: everything computed from it equals what the walk gives, a file
whose content id was seen before is not opened, and a changed file or code file still moves the
result. Real git repositories fetched through the real GitSource.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from backends.base import BackendRegistry
from reconciler.config.discovery import TreeIndex, scan, scan_index
from reconciler.config.loader import PARSE_CACHE, load_tree
from reconciler.engine import memo
from reconciler.engine.desired import build_desired
from reconciler.engine.reconcile import Engine, EngineSettings, Snapshot
from reconciler.source import code_files
from reconciler.source.checkout import Checkout, GitSource, open_bare_repo
from reconciler.source.trees import extract_revision, tree_hash
from tests.reconciler.fakes import FakeBackend, FakeProber, only_local_ships_workdir
from tests.support.git_repo import commit_push, git, make_remote


def service(name: str, greeting: str = "hi") -> str:
    return textwrap.dedent(
        f"""\
        type: service
        name: {name}
        env:
          - GREETING={greeting}
        commands:
          - python3 app.py 8000
        port: 8000
        auth: false
        """
    )


TREE = {
    "app.py": "print(1)\n",
    "run.sh": "#!/bin/sh\n",
    "a/.dstack.yml": service("alpha"),
    "a/b/c/deep.dstack.yml": service("deep"),
    "a/lib.py": "X = 1\n",
    "b.dstack.yml": service("bee"),
    "ignored/.dstack.yml": service("ignored"),
    "kept/.gitignore": "skip.dstack.yml\n/sub/\n",
    "kept/skip.dstack.yml": service("skip"),
    "kept/keep.dstack.yml": service("keep"),
    "kept/sub/.dstack.yml": service("under-ignored-folder"),
    "kept/other/.dstack.yml": service("other"),
    "data/big.bin": "0",
    "x.log": "log",
    "node_modules": "a file named like a skipped folder",
    "lib/node_modules/x.js": "1",
    ".dstack/profiles.yml": "profiles: []\n",
    ".dstackignore": "/data/\n*.log\n",
    ".gitignore": "/ignored/\n",
    "sp ace/\u00fc.txt": "unicode\n",
    "empty.txt": "",
}


def checkout(tmp_path: Path, files: dict[str, str], *, executable: tuple[str, ...] = ()) -> tuple[Checkout, Path, Path]:
    bare, work = make_remote(tmp_path, files)
    git(work, "add", "-f", "-A")  # what .gitignore names too: committed files are in the tree all the same
    git(work, "commit", "-qm", "forced", "--allow-empty")
    git(work, "push", "-q", "origin", "main")
    for rel in executable:
        git(work, "update-index", "--chmod=+x", rel)
        git(work, "commit", "-qm", "x")
        git(work, "push", "-q", "origin", "main")
    c = GitSource(str(bare), "main", tmp_path / "state").current()
    return c, bare, work


def test_the_index_is_what_git_archive_writes_and_so_is_the_folder_written_from_it(tmp_path: Path) -> None:
    # `ignored/` is committed although .gitignore names it (added before the rule, or forced)
    c, bare, _ = checkout(tmp_path, TREE, executable=("run.sh",))
    assert c.index is not None and c.index.executable == {"run.sh"}
    repo = open_bare_repo(GitSource(str(bare), "main", tmp_path / "state").repo_dir)
    archived, written = tmp_path / "archived", tmp_path / "written"
    extract_revision(repo, c.revision, archived)  # git archive + tar, as before the index
    extract_revision(repo, c.revision, written, c.index)
    for root in (archived, written, c.root):
        on_disk = sorted(Path(d, f).relative_to(root).as_posix() for d, _, fs in os.walk(root) for f in fs)
        assert sorted(c.index.files) == on_disk
    assert tree_hash(written) == tree_hash(archived)  # paths, exec bits and bytes
    assert (written / "sp ace" / "\u00fc.txt").read_text() == "unicode\n"
    assert os.access(written / "run.sh", os.X_OK) and not os.access(written / "app.py", os.X_OK)


@pytest.mark.parametrize("subpath", [None, "a", "kept", "kept/sub", "a/b"])
def test_scan_of_the_index_equals_the_walk(tmp_path: Path, subpath: str | None) -> None:
    c, _, _ = checkout(tmp_path, TREE)
    assert c.index is not None
    found, links = scan(c.root, subpath)
    assert links == []
    assert scan_index(c.root, c.index, subpath) == found
    assert found  # the case is not empty


def test_the_index_cannot_speak_for_a_subpath_that_is_a_file(tmp_path: Path) -> None:
    c, _, _ = checkout(tmp_path, TREE)
    assert c.index is not None and scan_index(c.root, c.index, "b.dstack.yml") is None


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({".gitattributes": "data/* export-ignore\n"}, id="gitattributes"),
        pytest.param({"sub/.gitattributes": "*.py export-subst\n"}, id="nested-gitattributes"),
    ],
)
def test_no_index_for_a_tree_git_archive_may_rewrite(tmp_path: Path, extra: dict[str, str]) -> None:
    c, _, _ = checkout(tmp_path, {**TREE, **extra})
    assert c.index is None


def test_no_index_for_a_tree_with_a_link(tmp_path: Path) -> None:
    bare, work = make_remote(tmp_path, TREE)
    os.symlink("app.py", work / "link.py")
    commit_push(work, {})
    assert GitSource(str(bare), "main", tmp_path / "state").current().index is None


def test_the_code_hash_from_the_index_equals_the_walk(tmp_path: Path) -> None:
    c, _, _ = checkout(tmp_path, TREE, executable=("run.sh", "a/lib.py"))
    assert c.index is not None
    code_files.clear_cache()
    assert code_files.index_code_hash(c.root, c.index) == code_files.code_hash(c.root)
    assert code_files.index_code_hash(c.root, c.index) == code_files.code_hash(c.root)  # from the blob digests


def test_an_index_without_the_exec_bit_changes_the_hash(tmp_path: Path) -> None:
    """The mode is read from the index: the same files, one executable, hash apart (as on disk)."""
    c, _, _ = checkout(tmp_path, TREE, executable=("run.sh",))
    assert c.index is not None
    plain = TreeIndex(c.index.files)
    assert code_files.index_code_hash(c.root, plain) != code_files.index_code_hash(c.root, c.index)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"app.py": "print(2)\n"}, id="code-file"),
        pytest.param({"a/new.py": "new\n"}, id="new-file"),
        pytest.param({"app.py": None}, id="deleted-file"),
        pytest.param({".dstackignore": "/data/\n"}, id="dstackignore"),
        pytest.param({"data/big.bin": "1"}, id="ignored-file-only"),
    ],
)
def test_a_pushed_code_change_moves_the_indexed_code_hash_as_the_walk_does(
    tmp_path: Path, change: dict[str, str | None]
) -> None:
    c1, bare, work = checkout(tmp_path, TREE)
    commit_push(work, change)
    c2 = GitSource(str(bare), "main", tmp_path / "state").current()
    assert c1.index is not None and c2.index is not None
    walked = (code_files.code_hash(c1.root), code_files.code_hash(c2.root))
    indexed = (code_files.index_code_hash(c1.root, c1.index), code_files.index_code_hash(c2.root, c2.index))
    assert indexed == walked
    assert (indexed[0] != indexed[1]) == ("data/big.bin" not in change)


def test_the_loader_with_the_index_equals_the_walk_and_opens_no_known_file(tmp_path: Path) -> None:
    c1, bare, work = checkout(tmp_path, TREE)
    assert c1.index is not None
    PARSE_CACHE.clear()
    walked, indexed = load_tree(c1.root), load_tree(c1.root, None, c1.index)
    assert indexed == walked
    commit_push(work, {"a/.dstack.yml": service("alpha", "v2")})
    c2 = GitSource(str(bare), "main", tmp_path / "state").current()
    assert c2.index is not None
    (c2.root / "b.dstack.yml").unlink()  # known by its blob id: must not be opened
    second = load_tree(c2.root, None, c2.index)
    assert second.services["bee"] is indexed.services["bee"]  # the very parse of the last revision
    assert second.services["alpha"].config.env == {"GREETING": "v2"}  # the changed file was read
    assert second.services["alpha"].spec_hash != indexed.services["alpha"].spec_hash
    assert load_tree(c2.root).services.keys() == second.services.keys() - {"bee"}  # the walk misses it


def test_a_blob_that_cannot_be_read_is_not_cached(tmp_path: Path) -> None:
    c, _, _ = checkout(tmp_path, TREE)
    assert c.index is not None
    index = TreeIndex(c.index.files, c.index.executable)  # as another process's: no bytes kept
    PARSE_CACHE.clear()
    text = (c.root / "b.dstack.yml").read_text()
    (c.root / "b.dstack.yml").unlink()
    broken = load_tree(c.root, None, index)
    assert "bee" not in broken.services and any("cannot read" in d.message for d in broken.diagnostics)
    (c.root / "b.dstack.yml").write_text(text)
    assert "bee" in load_tree(c.root, None, index).services


def test_the_index_keeps_the_bytes_of_the_config_files_it_wrote(tmp_path: Path) -> None:
    """(so a cold load reads none back): exactly the folder's bytes, config files only; the next
    revision keeps those of the files it links; a load from them equals one that reads the folder."""
    c1, bare, work = checkout(tmp_path, TREE)
    assert c1.index is not None
    configs = [rel for rel in c1.index.files if rel.endswith(".dstack.yml")]
    assert {c1.index.files[rel] for rel in configs} == c1.index.texts.keys()
    for rel in configs:
        assert c1.index.texts[c1.index.files[rel]] == (c1.root / rel).read_bytes()
    PARSE_CACHE.clear()
    kept = load_tree(c1.root, None, c1.index)
    PARSE_CACHE.clear()
    assert kept == load_tree(c1.root, None, TreeIndex(c1.index.files, c1.index.executable)) == load_tree(c1.root)
    commit_push(work, {"a/.dstack.yml": service("alpha", "v2")})
    source = GitSource(str(bare), "main", tmp_path / "state")
    source._index = (c1.revision, c1.index)  # as after reading c1: it lends its files
    c2 = source.current()
    assert c2.index is not None
    for rel in configs:
        assert c2.index.texts[c2.index.files[rel]] == (c2.root / rel).read_bytes()


def test_a_desired_set_from_the_index_equals_the_uncached_walk(tmp_path: Path) -> None:
    c1, bare, work = checkout(tmp_path, TREE)
    commit_push(work, {"app.py": "print(3)\n", "kept/keep.dstack.yml": service("keep", "v2")})
    c2 = GitSource(str(bare), "main", tmp_path / "state").current()

    def build(c: Checkout, index: TreeIndex | None) -> object:
        return build_desired(
            load_tree(c.root, None, index), revision=c.revision, workdir=str(c.root), env={}, salt="s",
            backends=["local", "aws"], ships_workdir=only_local_ships_workdir,
            code_hash=lambda: code_files.code_hash_at(c.root, c.revision, index),
        )  # fmt: skip

    fast = [build(c1, c1.index), build(c2, c2.index)]
    memo.enabled = PARSE_CACHE.enabled = code_files.FAST = False
    try:
        code_files.clear_cache()
        slow = [build(c1, None), build(c2, None)]
    finally:
        memo.enabled = PARSE_CACHE.enabled = code_files.FAST = True
    assert fast == slow


def test_the_engine_plans_an_indexed_checkout_as_the_walked_one(tmp_path: Path) -> None:
    c1, bare, work = checkout(tmp_path, TREE)
    commit_push(work, {"a/.dstack.yml": service("alpha", "v2"), "app.py": "print(9)\n"})
    c2 = GitSource(str(bare), "main", tmp_path / "state").current()
    plans = []
    for index in (True, False):
        engine = Engine(
            tmp_path / f"engine-{index}",
            BackendRegistry({"local": FakeBackend()}),
            EngineSettings(drain_min=0.0, drain_grace=0.0),
            prober=FakeProber(),
        )
        try:
            snaps = [Snapshot(c.revision, c.root, c.config_path, c.index if index else None) for c in (c1, c2)]
            engine.reconcile(snaps[0])
            plans.append(engine.plan(snaps[1]))
        finally:
            engine.close()
    # each engine has its own salt (so its own spec hashes): compare what does not carry it
    steps = [[(s.action, s.service, s.ordinal, s.reason) for s in p.plan.steps] for p in plans]
    assert steps[0] == steps[1]
    files = [{n: d.summary.get("files") for n, d in (p.desired.services.items() if p.desired else [])} for p in plans]
    assert files[0] == files[1] and all(files[0].values())
    assert {s[1] for s in steps[0]} == set(files[0])  # the code change rolls every service on the local backend


def test_the_next_revision_links_unchanged_files_and_equals_git_archive(tmp_path: Path) -> None:
    c1, bare, work = checkout(tmp_path, TREE, executable=("run.sh",))
    # `add -A` stages run.sh as it is on disk (not executable): the same bytes, another mode
    commit_push(work, {"app.py": "print(2)\n", "b.dstack.yml": None, "new/file.txt": "new\n"})
    source = GitSource(str(bare), "main", tmp_path / "state")
    source._index = (c1.revision, c1.index)  # as after reading c1 (a new process has not)
    c2 = source.current()
    assert c2.index is not None
    archived = tmp_path / "archived"
    extract_revision(open_bare_repo(source.repo_dir), c2.revision, archived)
    assert tree_hash(c2.root) == tree_hash(archived)
    same = os.stat(c2.root / "a" / "lib.py").st_ino == os.stat(c1.root / "a" / "lib.py").st_ino
    assert same, "an unchanged file is a link to the last revision's"
    assert os.stat(c2.root / "app.py").st_ino != os.stat(c1.root / "app.py").st_ino
    assert os.stat(c2.root / "run.sh").st_ino != os.stat(c1.root / "run.sh").st_ino
    assert not os.access(c2.root / "run.sh", os.X_OK) and os.access(c1.root / "run.sh", os.X_OK)
    assert (c2.root / "app.py").read_text() == "print(2)\n" and (c1.root / "app.py").read_text() == "print(1)\n"


def test_an_index_git_cannot_answer_falls_back_to_git_archive(tmp_path: Path) -> None:
    """A blob the objects do not hold (a stale or wrong index): the half-written folder is thrown
    away and the revision is extracted through `git archive` as before."""
    c, bare, _ = checkout(tmp_path, TREE)
    assert c.index is not None
    wrong = TreeIndex({**c.index.files, "app.py": bytes(20)}, c.index.executable)
    repo = open_bare_repo(GitSource(str(bare), "main", tmp_path / "state").repo_dir)
    root = tmp_path / "fallback"
    extract_revision(repo, c.revision, root, wrong)
    assert tree_hash(root) == tree_hash(c.root)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".fallback")], "no half-built folder left"
