"""The content hash of the repository files a replica gets, once per revision.

Why: the local backend runs each replica in a copy of the checkout (`backends.workdir.
copy_workdir`), so a push that changes only `app.py` changes what the replica runs and must roll
it, even though no `.dstack.yml` changed. The hash covers exactly the files that copy ships, minus
the configs themselves: `.git` and whatever the root `.dstackignore` excludes are left out by the
very matcher `copy_workdir` uses (`backends.workdir.dstackignore`); every `.dstack.yml` /
`*.dstack.yml` file (the loader's `is_config_file`) and the root `.dstack/` folder (profiles) are
left out too, because the replica spec hash already covers its own config and editing another
service's config must not roll this one. Walking and hashing reuse `source.trees.tree_hash`.

A revision is immutable (a git sha, or a `worktree-<content hash>`), so the hash is cached per
(checkout folder, revision): a 1,000-service repo hashes its tree once per snapshot, not once per
service, and the engine's re-plans of the same revision hash nothing. Without a revision nothing
is cached. A revision whose index differs from one hashed before only in config files (which the
hash leaves out) gets that hash from one comparison of the two indexes (`_indexed_hash`).

Speed: `code_hash` walks with `os.scandir` once per directory and matches the `.dstackignore`
patterns as one compiled expression, asking the file system about links only for entries the
directory listing says are links (`walk` + `dstackignore` stat every name). The result is the very
hash `tree_hash(root, shipped_files(root))` gives (a test holds them equal on a tree with every
case: ignored names and paths, links in and out, linked folders, executables, nested configs);
`FAST = False` (the benchmark's "before") uses that slow path.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path

from backends.workdir import _leads_outside, dstackignore
from reconciler.config.loader import TreeIndex, is_config_file
from reconciler.source.trees import SKIP_DIRS, IgnoreFn, tree_hash

CONFIG_DIR = ".dstack"
_CACHE_SIZE = 32
_cache: OrderedDict[tuple[str, str], str] = OrderedDict()
_lock = threading.Lock()
FAST = True


def shipped_files(root: Path) -> IgnoreFn:
    """The copytree-style ignore for hashing: what `copy_workdir` leaves out, plus every config
    file and the root `.dstack/` folder."""
    shipped = dstackignore(root)
    top = os.path.normpath(root)

    def ignore(directory: str, names: list[str]) -> set[str]:
        out = shipped(directory, names)
        out.update(n for n in names if is_config_file(n))
        if os.path.normpath(directory) == top and CONFIG_DIR in names:
            out.add(CONFIG_DIR)
        return out

    return ignore


def code_hash(root: Path) -> str:
    """sha256 hex of the files a replica gets from `root` (see the module docstring)."""
    if not FAST:
        return tree_hash(root, shipped_files(root))
    h = hashlib.sha256()
    _hash_dir(h, str(root), "", _ignore_pattern(root), Path(root).resolve())
    return h.hexdigest()


def _ignore_pattern(root: Path) -> re.Pattern[str]:
    """`backends.workdir.dstackignore`'s patterns (`.git` and the root `.dstackignore`) as one
    expression, matched like `fnmatch` against a name and against its path from the root."""
    patterns = [".git"]
    with contextlib.suppress(FileNotFoundError):
        for line in (Path(root) / ".dstackignore").read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                patterns.append(line.strip("/"))
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


def _hash_dir(h: hashlib._Hash, directory: str, rel_dir: str, ignored: re.Pattern[str], inside: Path) -> None:
    """`trees.tree_hash`'s walk of one directory, in its order: its files by name, then each
    sub-folder by name (`os.walk` top-down; a linked folder is listed but never entered, and is
    not a file, so it adds nothing)."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return  # os.walk skips an unreadable folder the same way
    top = not rel_dir
    files: list[tuple[str, os.DirEntry[str]]] = []
    dirs: list[str] = []
    for entry in entries:
        name = entry.name
        rel = f"{rel_dir}/{name}" if rel_dir else name
        if ignored.match(name) or ignored.match(rel) or is_config_file(name) or (top and name == CONFIG_DIR):
            continue
        if entry.is_symlink() and _leads_outside(Path(entry.path), inside):
            continue  # a link out of the repository never reaches a replica
        try:
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False
        if is_dir:
            if name not in SKIP_DIRS and not entry.is_symlink():
                dirs.append(name)
        else:
            files.append((name, entry))
    for name, entry in sorted(files, key=lambda f: f[0]):
        rel = f"{rel_dir}/{name}" if rel_dir else name
        if entry.is_symlink():
            h.update(f"{rel}\0link:{os.readlink(entry.path)}\0".encode())
            continue
        if not entry.is_file():
            continue
        h.update(rel.encode() + b"\0")
        h.update(b"x" if os.access(entry.path, os.X_OK) else b"-")
        try:
            with open(entry.path, "rb") as f:
                h.update(hashlib.file_digest(f, "sha256").digest())
        except OSError as e:
            h.update(f"unreadable:{e.errno}".encode())
    for name in sorted(dirs):
        _hash_dir(h, os.path.join(directory, name), f"{rel_dir}/{name}" if rel_dir else name, ignored, inside)


# git blob id -> sha256 of its bytes: a file of an indexed checkout is read once per content.
_BLOB_DIGESTS_MAX = 100_000
_blob_digests: OrderedDict[bytes, bytes] = OrderedDict()


def _left_out(folder: str, known: dict[str, bool], ignored: re.Pattern[str]) -> bool:
    """Whether `folder` (or a folder above it) is left out of the hash, kept in `known`. A
    function of the module, not a recursive closure: that would be a reference cycle (function
    -> cell -> function) holding `known`, freed only by the cyclic collector, and the engine moves
    what a load made to the oldest generation (reconciler.engine.memo._promote)."""
    found = known.get(folder)
    if found is None:
        parent, _, name = folder.rpartition("/")
        found = _left_out(parent, known, ignored) or _skip(name, folder, ignored, not parent) or name in SKIP_DIRS
        known[folder] = found
    return found


def index_code_hash(root: Path, index: TreeIndex) -> str | None:
    """`code_hash(root)` from the source's index of the folder (discovery.TreeIndex: no symbolic
    links in it): the same files in the same order, each file's bytes hashed once per content id
    (a file whose content was seen before is not read). None when a file cannot be read (the
    walk then words it as `code_hash` does)."""
    ignored = _ignore_pattern(root)
    left_out: dict[str, bool] = {"": False}
    h = hashlib.sha256()
    for rel, blob in index.files.items():
        folder, _, name = rel.rpartition("/")
        if _left_out(folder, left_out, ignored) or _skip(name, rel, ignored, not folder):
            continue
        with _lock:
            digest = _blob_digests.get(blob)
        if digest is None:
            try:
                with open(os.path.join(root, rel), "rb") as f:
                    digest = hashlib.file_digest(f, "sha256").digest()
            except OSError:
                return None
            with _lock:
                _blob_digests[blob] = digest
                while len(_blob_digests) > _BLOB_DIGESTS_MAX:
                    _blob_digests.popitem(last=False)
        h.update(rel.encode() + b"\0")
        h.update(b"x" if rel in index.executable else b"-")
        h.update(digest)
    return h.hexdigest()


def _skip(name: str, rel: str, ignored: re.Pattern[str], top: bool) -> bool:
    """What `_hash_dir` leaves out by name: ignored, a config file, the root `.dstack/`."""
    return bool(ignored.match(name) or ignored.match(rel)) or is_config_file(name) or (top and name == CONFIG_DIR)


def code_hash_at(root: Path, revision: str | None, index: TreeIndex | None = None) -> str:
    """`code_hash(root)`, computed once per (root, revision) while it stays in a small LRU;
    from `index` (the source's, see `index_code_hash`) when one is given."""
    if revision is None:
        return code_hash(root)
    key = (str(Path(root).absolute()), revision)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    value = (_indexed_hash(root, index) if index is not None and FAST else None) or code_hash(root)
    with _lock:
        _cache[key] = value
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return value


# the last indexes hashed and their hash: a revision whose index differs from one of them only in
# config files (`is_config_file` names, which the hash leaves out) has the same hash, known
# from one comparison of the two indexes instead of a pass over every file
_LAST_INDEXED: list[tuple[TreeIndex, str]] = []
_LAST_INDEXED_SIZE = 4


def _indexed_hash(root: Path, index: TreeIndex) -> str | None:
    with _lock:
        known = list(_LAST_INDEXED)
    for before, known_hash in known:
        if before is index or _only_configs_differ(before, index):
            return known_hash
    value = index_code_hash(root, index)
    if value is not None:
        with _lock:
            _LAST_INDEXED.insert(0, (index, value))
            del _LAST_INDEXED[_LAST_INDEXED_SIZE:]
    return value


def _only_configs_differ(a: TreeIndex, b: TreeIndex) -> bool:
    """The two indexes list the same files but for config files (added, removed or changed), with
    the same executables: `index_code_hash` gives both the same hash."""
    if a.executable != b.executable:
        return False
    changed = a.files.items() ^ b.files.items()
    return all(is_config_file(path.rpartition("/")[2]) for path, _ in changed)


def clear_cache() -> None:
    """Forget every cached hash (tests that rewrite a folder under one revision name)."""
    with _lock:
        _cache.clear()
        _blob_digests.clear()
        _LAST_INDEXED.clear()
