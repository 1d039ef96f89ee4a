"""`tidegate logs --follow`: follow a replica's log file by byte offset, like `tail -F`.

Why not re-read the last lines and diff them: a window of lines cannot tell a repeated line from an
old one (identical lines printed nothing) and reprints history after a gap. A byte offset in one
file (by inode) is exact: new bytes are new output. The local backend rotates `replica.log` to
`replica.log.1` at its size cap (the old inode lives on under the new name), so on rotation the rest
of the old file is read from the `.1` name before the new file is followed from its start; a file
that shrank under the same inode was truncated and is read from 0. When the followed replica is
replaced (a roll, a restart), the caller switches to the new replica's file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

CHUNK = 64 * 1024


class FileFollower:
    """New complete lines of one log file across rotation and truncation."""

    def __init__(self, path: Path, *, from_end: bool = True) -> None:
        self.path = path
        self.inode: int | None = None
        self.offset = 0
        self.partial = b""
        st = _stat(path)
        if st is not None:
            self.inode = st.st_ino
            self.offset = st.st_size if from_end else 0

    def read(self) -> list[str]:
        out: list[str] = []
        st = _stat(self.path)
        if st is None:
            return out
        if self.inode is not None and st.st_ino != self.inode:
            rotated = self.path.with_name(self.path.name + ".1")
            old = _stat(rotated)
            if old is not None and old.st_ino == self.inode:
                out += self._drain(rotated)  # the end of the old file, now under the `.1` name
            self.inode, self.offset = st.st_ino, 0
        elif self.inode is None:
            self.inode, self.offset = st.st_ino, 0
        elif st.st_size < self.offset:
            self.offset = 0  # truncated in place
        out += self._drain(self.path)
        return out

    def _drain(self, path: Path) -> list[str]:
        data = b""
        try:
            with path.open("rb") as f:
                f.seek(self.offset)
                while chunk := f.read(CHUNK):
                    data += chunk
                    self.offset += len(chunk)
        except OSError:
            return []
        data = self.partial + data
        *lines, self.partial = data.split(b"\n")
        return [line.decode("utf-8", errors="replace").rstrip("\r") for line in lines]


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except OSError:
        return None


def follow_lines(
    current: Callable[[], tuple[str, Path | None]],
    emit: Callable[[str], None],
    should_stop: Callable[[], bool],
    sleep: Callable[[float], None],
    interval: float = 0.5,
) -> None:
    """Follow the replica `current()` names (id, its log path) until `should_stop()`; when it
    changes (the replica was replaced) say so and follow the new one from its start."""
    replica, path = current()
    follower = FileFollower(path) if path is not None else None
    while not should_stop():
        sleep(interval)
        now, now_path = current()
        if now != replica:
            if follower is not None:
                for line in follower.read():
                    emit(line)
            emit(f"--- {replica} was replaced; following {now} ---")
            replica, follower = now, FileFollower(now_path, from_end=False) if now_path is not None else None
            path = now_path
        elif follower is None and now_path is not None:
            follower, path = FileFollower(now_path, from_end=False), now_path
        if follower is not None:
            for line in follower.read():
                emit(line)
