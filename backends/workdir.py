"""The repository copy a replica gets: which files of the checkout a backend that ships it copies.

Why a module of its own, at the top of `backends/`: two sides must agree on that set. The local
backend copies it into each replica's `work/` (`Backend.ships_workdir`), and the reconciler hashes
exactly those files (reconciler.source.code_files), so a push that changes `app.py` rolls the
replicas and one that changes only an ignored file does not. `.git`, the patterns of the root
`.dstackignore` and symbolic links leading out of the repository are never shipped.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
from collections.abc import Callable
from pathlib import Path


def _leads_outside(path: Path, root: Path) -> bool:
    if not path.is_symlink():
        return False
    try:
        return not (path.parent / os.readlink(path)).resolve().is_relative_to(root)
    except (OSError, RuntimeError, ValueError):
        return True


def dstackignore(src: Path) -> Callable[[str, list[str]], set[str]]:
    """A copytree `ignore` callable: `.git`, the patterns of `<src>/.dstackignore`, and symbolic
    links leading outside `src`.

    Patterns are matched like simple gitignore entries: against the name, and against the path
    relative to `src` (a leading or trailing `/` is dropped).
    """
    patterns = [".git"]
    with contextlib.suppress(FileNotFoundError):
        for line in (src / ".dstackignore").read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                patterns.append(line.strip("/"))

    inside = src.resolve()

    def ignore(directory: str, names: list[str]) -> set[str]:
        rel_dir = os.path.relpath(directory, src)
        ignored = set()
        for name in names:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(rel, p) for p in patterns):
                ignored.add(name)
            elif _leads_outside(Path(directory) / name, inside):
                ignored.add(name)  # a link out of the repository never reaches a replica
        return ignored

    return ignore


def copy_workdir(src: str | None, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    if src is None:
        dst.mkdir(parents=True)
        return
    shutil.copytree(src, dst, symlinks=True, ignore=dstackignore(Path(src)))
