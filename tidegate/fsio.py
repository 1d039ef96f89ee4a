"""Crash-safe file writes: the one temp file + fsync + `os.replace` + directory fsync helper.

Why: every document tidegate keeps on disk (state.json, routes.json, tokens.json, replica meta,
preview bookkeeping, the orphan sweeper's first-seen times, the offer catalog) must be either the
old whole file or the new whole file after a crash, never half of one. The steps are easy to get
subtly wrong (forgetting the directory fsync, leaving temp files behind on error), so they live
here once.

Why in `tidegate/`: the reconciler, the gateway and the backends all write such files, and this
package is the one all three may import. It imports nothing but the standard library.
(`backends/local_relay.py` keeps its own copy: it runs
by path with `python -I -S` and may not import the package.)
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Errors that mean "this filesystem takes no more writes", whatever file was being written.
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in _FULL


def describe_os_error(error: OSError, path: Path | str | None = None) -> str:
    """One line for a user: "disk full at <path>", "read-only file system at <path>", or
    "<path>: <strerror>". `path` is the file being written when the error does not name one."""
    where = path if path is not None else (error.filename or "?")
    if error.errno in _FULL:
        return f"disk full at {where}"
    if error.errno == errno.EROFS:
        return f"read-only file system at {where}"
    return f"{where}: {error.strerror or error}"


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged writer may still use on the filesystem of `path` (None: unknown)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def fsync_dir(path: Path) -> None:
    """Make a rename (or link) inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, mode: int | None = None, mkdir: bool = True) -> None:
    """Replace `path` with `data` atomically and durably.

    The temp file sits in the same directory (so `os.replace` is a rename, never a copy) and is
    removed if anything fails before the rename. `mode` sets the file's permissions before it
    becomes visible (mkstemp creates it 0600). `mkdir=False` refuses to create a missing parent
    (a caller writing into a folder that may have been removed on purpose).
    """
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_json_atomic(
    path: Path,
    body: Any,
    *,
    indent: int | None = None,
    sort_keys: bool = False,
    mode: int | None = None,
    mkdir: bool = True,
) -> None:
    """`write_atomic` of `body` as JSON (ASCII, so the bytes do not depend on the locale)."""
    write_atomic(path, json.dumps(body, indent=indent, sort_keys=sort_keys).encode(), mode=mode, mkdir=mkdir)


def build_dir_atomic(final: Path, fill: Callable[[Path], None]) -> None:
    """Build a directory beside `final` with `fill` and rename it into place: a crash never leaves
    half a tree. Losing the rename race to another builder of the same `final` is fine (the tree
    is content-addressed by its name); any other failure is raised."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    try:
        fill(tmp)
        os.replace(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not final.is_dir():
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
