"""The state directory store: one owner (lock file), atomic JSON documents, installation identity.

Why: a reconciler that can be killed at any moment must never leave a half-written file, and two
reconcilers driving the same replicas would start everything twice. So:

- `lock` is held with `fcntl.flock` for the life of the owning process and names its holder
  (pid, host); a second owner is refused with that name. Read-only commands (`ps`, `plan`) read
  the documents without taking the lock; they only ever see whole files.
- every document is written to a temp file, fsynced, `os.replace`d, and the directory fsynced.
- `state.json` carries `schema_version`, `serial` (bumped on each write) and `lineage` (a uuid
  fixed at creation); a write whose lineage differs from the file on disk is refused.
- `installation.json` holds the installation id (the owner tag on every resource) and the salt
  for hashing env values; it is created once and never rewritten.
- documents are serialised as they are: secret values never enter them (reconciler.state.redact hashes
  them where they enter and masks outside text field by field), so nothing is rewritten as text.
- permissions: the state dir and its folders are 0700, its files 0600 (the lock, state.json,
  journal, installation, tokens, routes, stats…): created so, and tightened on `acquire` when an
  older tidegate or a umask left them wider (`tighten_modes`).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import stat
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.state.errors import StaleStateError, StateError, StateLockedError
from reconciler.state.records import SCHEMA_VERSION, StateDoc
from tidegate.fsio import fsync_dir, write_atomic

log = logging.getLogger("tidegate.state")

STATE_FILE = "state.json"
LOCK_FILE = "lock"
INSTALLATION_FILE = "installation.json"
DIR_MODE = 0o700
FILE_MODE = 0o600


def tighten_modes(state_dir: Path) -> list[str]:
    """Take group and other permissions off the state dir and what is in it, two levels deep (its
    files, and the folders `signals/`, `gateway/`, `replicas/` with their entries: each replica
    folder becomes 0700, and what a replica keeps inside it is left as it is), so folders end 0700
    and files 0600 (an owner's x bit is kept). Returns the paths changed. Symlinks are never
    followed."""
    changed: list[str] = []

    def fix(path: Path) -> None:
        try:
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode) or not st.st_mode & 0o077:
                return
            os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o077)
        except OSError:
            return
        changed.append(str(path))

    def walk(folder: Path, depth: int) -> None:
        fix(folder)
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return
        for e in entries:
            if e.is_symlink():
                continue
            if e.is_dir() and depth > 0:
                walk(Path(e.path), depth - 1)
            else:
                fix(Path(e.path))

    walk(Path(state_dir), 1)
    return changed


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise StateError(f"cannot read {path}: {e}") from e


@dataclass(frozen=True)
class Installation:
    id: str
    salt: str
    created_at: float


class StateStore:
    """Reads and writes the documents of one state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir)
        self._lock_fd: int | None = None
        self._lineage: str | None = None

    # -- ownership -------------------------------------------------------------------------
    @property
    def locked(self) -> bool:
        return self._lock_fd is not None

    def acquire(self) -> None:
        """Become the one owner of this state dir, or raise StateLockedError naming the holder."""
        if self._lock_fd is not None:
            return
        self.dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        fd = os.open(self.dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            os.close(fd)
            holder = self.holder() or "another process"
            raise StateLockedError(
                f"state directory {self.dir} is in use by {holder}; stop it first or use another --state",
                holder=holder,
            ) from e
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid={os.getpid()} host={socket.gethostname()}\n".encode(), 0)
        os.fsync(fd)
        self._lock_fd = fd
        for path in tighten_modes(self.dir):
            log.info("tightened the permissions of %s (state files are 0600, folders 0700)", path)

    def release(self) -> None:
        if self._lock_fd is None:
            return
        fd, self._lock_fd = self._lock_fd, None
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def holder(self) -> str | None:
        """Who holds the lock (as written by the holder), or None when nobody holds it."""
        path = self.dir / LOCK_FILE
        if not path.exists():
            return None
        fd = os.open(path, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                text = path.read_text().strip()
                return text or "unknown holder"
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def _require_lock(self) -> None:
        if self._lock_fd is None:
            raise StateError("writing the state requires owning the state directory (acquire() first)")

    # -- installation ----------------------------------------------------------------------
    def installation(self) -> Installation:
        """The installation identity, created once (O_EXCL, so two creators cannot disagree)."""
        path = self.dir / INSTALLATION_FILE
        raw = read_json(path)
        if raw is None:
            self.dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            data = {
                "schema_version": 1,
                "id": f"tg-{uuid.uuid4().hex[:12]}",
                "salt": uuid.uuid4().hex,
                "created_at": time.time(),
            }
            tmp = self.dir / f".{INSTALLATION_FILE}.{os.getpid()}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
            with os.fdopen(fd, "wb") as f:
                f.write(json.dumps(data, indent=2).encode())
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)  # atomic create-if-absent
                fsync_dir(self.dir)
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
            raw = read_json(path)
        try:
            return Installation(id=str(raw["id"]), salt=str(raw["salt"]), created_at=float(raw["created_at"]))
        except (KeyError, TypeError, ValueError) as e:
            raise StateError(f"{path} is malformed: {e}") from e

    # -- state.json ------------------------------------------------------------------------
    def load(self) -> StateDoc:
        """The current document; a fresh one (new lineage, serial 0) when none exists yet."""
        raw = read_json(self.dir / STATE_FILE)
        if raw is None:
            doc = StateDoc(lineage=str(uuid.uuid4()))
        else:
            version = raw.get("schema_version", 0) if isinstance(raw, dict) else None
            if not isinstance(version, int) or version > SCHEMA_VERSION:
                raise StateError(
                    f"{self.dir / STATE_FILE} has schema_version {version!r}; this tidegate reads up to {SCHEMA_VERSION}"
                )
            try:
                doc = StateDoc.model_validate(raw)
            except ValueError as e:
                raise StateError(f"{self.dir / STATE_FILE} is malformed: {e}") from e
        self._lineage = doc.lineage
        return doc

    def save(self, doc: StateDoc) -> StateDoc:
        """Write `doc` with serial+1. Refuses when the file on disk belongs to another lineage
        or already has a serial at or past the one being written (someone else wrote it)."""
        self._require_lock()
        path = self.dir / STATE_FILE
        on_disk = read_json(path)
        if isinstance(on_disk, dict):
            if on_disk.get("lineage") != doc.lineage:
                raise StaleStateError(
                    f"{path} has lineage {on_disk.get('lineage')}, not {doc.lineage}: refusing to overwrite"
                )
            if int(on_disk.get("serial", 0)) > doc.serial:
                raise StaleStateError(f"{path} moved on (serial {on_disk.get('serial')} > {doc.serial})")
        doc.serial += 1
        doc.updated_at = time.time()
        write_atomic(path, doc.model_dump_json(indent=1).encode(), mode=FILE_MODE)
        return doc
