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
is cached.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

from backends.workdir import dstackignore
from reconciler.config.loader import is_config_file
from reconciler.source.trees import IgnoreFn, tree_hash

CONFIG_DIR = ".dstack"
_CACHE_SIZE = 32
_cache: OrderedDict[tuple[str, str], str] = OrderedDict()
_lock = threading.Lock()


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
    return tree_hash(root, shipped_files(root))


def code_hash_at(root: Path, revision: str | None) -> str:
    """`code_hash(root)`, computed once per (root, revision) while it stays in a small LRU."""
    if revision is None:
        return code_hash(root)
    key = (str(Path(root).absolute()), revision)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    value = code_hash(root)
    with _lock:
        _cache[key] = value
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return value


def clear_cache() -> None:
    """Forget every cached hash (tests that rewrite a folder under one revision name)."""
    with _lock:
        _cache.clear()
