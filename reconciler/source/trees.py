"""Trees of files as the source handles them: walking, content hashes, copies, safe tar extraction.

Why a module of its own: both kinds of source (a git revision extracted from `git archive`, a
watched working tree copied as it is) and the code hash (code_files) work on plain folders the
same way: the same folders skipped, links kept as links and never followed, nothing written
outside the destination. checkout.py keeps what is particular to each source.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

# A `shutil.copytree`-style ignore callable: (directory, names in it) -> names to leave out.
IgnoreFn = Callable[[str, list[str]], set[str]]
# VCS and cache folders: never part of a revision, a hash or a copy.
SKIP_DIRS = frozenset({".git", "__pycache__", ".venv", "node_modules", ".mypy_cache", ".pytest_cache"})


def walk(path: Path, ignore: IgnoreFn | None = None) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(path):
        skip = ignore(dirpath, [*dirnames, *filenames]) if ignore is not None else set()
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and d not in skip)
        for name in sorted(filenames):
            if name not in skip:
                yield Path(dirpath) / name


def tree_hash(path: Path, ignore: IgnoreFn | None = None) -> str:
    """Content hash of a folder: relative paths, modes and bytes (VCS/cache folders skipped, and
    whatever `ignore` leaves out). A file that cannot be read counts by its name and the error,
    so a file vanishing mid-walk does not abort the hash."""
    h = hashlib.sha256()
    for file in walk(path, ignore):
        rel = file.relative_to(path).as_posix()
        if file.is_symlink():
            h.update(f"{rel}\0link:{os.readlink(file)}\0".encode())
            continue
        if not file.is_file():
            continue
        h.update(rel.encode() + b"\0")
        h.update(b"x" if os.access(file, os.X_OK) else b"-")
        try:
            with file.open("rb") as f:
                h.update(hashlib.file_digest(f, "sha256").digest())
        except OSError as e:
            h.update(f"unreadable:{e.errno}".encode())
    return h.hexdigest()


def copy_tree(src: Path, dst: Path, ignore: IgnoreFn | None = None) -> None:
    """Files as they are; symbolic links as links (never followed), so the loader sees the tree
    the user has, links leading outside it included (it reports those)."""
    for file in walk(src, ignore):
        if not file.is_symlink() and not file.is_file():
            continue
        target = dst / file.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        if file.is_symlink():
            os.symlink(os.readlink(file), target)
        else:
            shutil.copy2(file, target)


def extract_tar(buf: io.BytesIO, dst: Path) -> None:
    """Extract a `git archive` tar safely: nothing is ever written outside `dst` or through a
    link. A symbolic link leading outside the tree is not extracted by the filter but recreated
    as the same link afterwards (never followed), so the loader reports it on its file exactly as
    it does for a working tree, and the replicas' copy leaves it out."""
    outside: list[tuple[str, str]] = []
    with tarfile.open(fileobj=buf, mode="r:") as tar:
        if hasattr(tarfile, "data_filter"):

            def keep(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
                try:
                    return tarfile.data_filter(member, path)
                except tarfile.FilterError:
                    if member.issym():
                        outside.append((member.name, member.linkname))
                    return None  # anything else that would escape is left out

            tar.extractall(dst, filter=keep)
        else:  # Python < 3.11.4: reject escaping members ourselves
            for member in tar.getmembers():
                target = (dst / member.name).resolve()
                if not target.is_relative_to(dst.resolve()) or member.issym() or member.islnk():
                    continue
                tar.extract(member, dst)
    for name, linkname in outside:
        link = dst / name
        if link.parent.is_dir() and not link.is_symlink() and not link.exists() and link.parent.resolve().is_relative_to(dst.resolve()):
            os.symlink(linkname, link)
