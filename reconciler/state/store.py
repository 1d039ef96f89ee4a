"""The state directory store: one owner (lock file), atomic JSON documents, installation identity.

Why: a reconciler that can be killed at any moment must never leave a half-written file, and two
reconcilers driving the same replicas would start everything twice. So:

- `lock` is held with `fcntl.flock` for the life of the owning process and names its holder
  (pid, host); a second owner is refused with that name. Read-only commands (`ps`, `plan`) read
  the documents without taking the lock; they only ever see whole files.
- every document is written to a temp file, fsynced, `os.replace`d, and the directory fsynced.
- `state.json` carries `schema_version`, `serial` (bumped on each write) and `lineage` (a uuid
  fixed at creation); a write whose lineage differs from the file on disk is refused.
- the previous good `state.json` is kept as `state.json.backup` (a hard link to the replaced file,
  so keeping it costs no copy); `tidegate state restore` puts it back. A file that cannot be read
  (truncated, not JSON, a newer `schema_version`) is refused and never rewritten: the error names
  the file, the cause and that command.
- `check()` tells the engine, before it acts, whether what it is about to do could be recorded:
  the file on disk is still the one it last wrote (or readable, same lineage, not ahead) and the
  directory takes a write. When it cannot be, nothing that changes what runs happens.
- `installation.json` holds the installation id (the owner tag on every resource) and the salt
  for hashing env values; it is created once and never rewritten.
- documents are serialised as they are: secret values never enter them (reconciler.state.redact hashes
  them where they enter and masks outside text field by field), so nothing is rewritten as text.
- permissions: the state dir and its folders are 0700, its files 0600 (the lock, state.json,
  journal, installation, tokens, routes, stats…): created so, and tightened on `acquire` when an
  older tidegate or a umask left them wider (`tighten_modes`).
"""

from __future__ import annotations

import contextlib
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

from reconciler.state.doc_json import DocWriter
from reconciler.state.errors import (
    StaleStateError,
    StateError,
    StateLockedError,
    StateUnreadableError,
    StateUnwritableError,
)
from reconciler.state.records import SCHEMA_VERSION, StateDoc
from tidegate.fsio import describe_os_error, fsync_dir, write_atomic

log = logging.getLogger("tidegate.state")
_SAVE_STAMPS = frozenset({"serial", "updated_at"})

STATE_FILE = "state.json"
BACKUP_FILE = "state.json.backup"
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


PROBE_FILE = ".write-probe"

# (inode, mtime ns, size): "is this still the file I last wrote?" without reading it.
Stamp = tuple[int, int, int]


def read_json(path: Path) -> Any:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StateUnreadableError(f"cannot read {path}: {describe_os_error(e, path)}") from e
    try:
        return json.loads(data)
    except ValueError as e:
        why = "the file is empty" if not data.strip() else f"not valid JSON ({e})"
        raise StateUnreadableError(f"{path} cannot be read: {why}") from e


def stamp_of(path: Path) -> Stamp | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def restore_command(state_dir: Path) -> str:
    return f"tidegate state restore --state {state_dir}"


def parse_state(path: Path, raw: Any) -> StateDoc:
    """A state document from parsed JSON; a newer schema or a malformed one is refused, naming
    the file (never rewritten: a newer tidegate's state must not be downgraded by an older one)."""
    if not isinstance(raw, dict):
        raise StateUnreadableError(f"{path} cannot be read: expected a JSON object, got {type(raw).__name__}")
    version = raw.get("schema_version", 0)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise StateUnreadableError(
            f"{path} has schema_version {version!r}; this tidegate reads up to {SCHEMA_VERSION} "
            "and will not rewrite it (a newer tidegate wrote it)"
        )
    try:
        return StateDoc.model_validate(raw)
    except ValueError as e:
        first = str(e).splitlines()
        raise StateUnreadableError(f"{path} is malformed: {' '.join(first[:3])}") from e


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
        # state.json as this store last read or wrote it: its stamp, lineage and serial.
        self._known: tuple[Stamp, str, int] | None = None
        self._writer = DocWriter()  # state.json's text, unedited records' JSON kept

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
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid={os.getpid()} host={socket.gethostname()}\n".encode(), 0)
            os.fsync(fd)
        except OSError:
            pass  # who holds it is a courtesy for the refused; a full disk must not stop the owner
        self._lock_fd = fd
        tightened = list(tighten_modes(self.dir))
        if tightened:  # one line, however many (a fresh quickstart repo is dozens of paths)
            shown = ", ".join(str(p) for p in tightened[:3]) + (f" and {len(tightened) - 3} more" if len(tightened) > 3 else "")
            log.info("tightened the permissions of %s (state files are 0600, folders 0700)", shown)

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
    def installation(self, create: bool = True) -> Installation:
        """The installation identity, created once (O_EXCL, so two creators cannot disagree).
        `create=False` (read-only commands) answers an unsaved one when none exists yet."""
        path = self.dir / INSTALLATION_FILE
        raw = read_json(path)
        if raw is None and not create:
            return Installation(id="tg-unsaved", salt=uuid.uuid4().hex, created_at=time.time())
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
        version = raw.get("schema_version", 1) if isinstance(raw, dict) else None
        if not isinstance(version, int) or version > 1:
            raise StateUnreadableError(f"{path} has schema_version {version!r}; this tidegate reads up to 1")
        try:
            return Installation(id=str(raw["id"]), salt=str(raw["salt"]), created_at=float(raw["created_at"]))
        except (KeyError, TypeError, ValueError) as e:
            raise StateError(f"{path} is malformed: {e}") from e

    # -- state.json ------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self.dir / STATE_FILE

    @property
    def backup_path(self) -> Path:
        return self.dir / BACKUP_FILE

    def _unreadable(self, error: StateUnreadableError) -> StateUnreadableError:
        """`error` with what to do about it: the backup and the command that restores it."""
        try:
            backup = self.read_backup()
        except StateError:
            backup = None
        if backup is not None:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(backup.updated_at)) if backup.updated_at else "?"
            hint = (
                f"The previous good state (serial {backup.serial}, saved {when}) is in {self.backup_path}; "
                f"`{restore_command(self.dir)}` puts it back"
            )
        else:
            hint = f"There is no usable backup ({self.backup_path}); move the file away to start from an empty state"
        return StateUnreadableError(f"{error}. {hint}")

    def load(self) -> StateDoc:
        """The current document; a fresh one (new lineage, serial 0) when none exists yet."""
        before = stamp_of(self.path)
        try:
            raw = read_json(self.path)
            doc = StateDoc(lineage=str(uuid.uuid4())) if raw is None else parse_state(self.path, raw)
        except StateUnreadableError as e:
            raise self._unreadable(e) from e
        self._lineage = doc.lineage
        if before is not None and raw is not None:
            self._known = (before, doc.lineage, doc.serial)
        return doc

    def read_backup(self) -> StateDoc | None:
        """The backup document, or None when there is none. Raises StateUnreadableError."""
        raw = read_json(self.backup_path)
        return None if raw is None else parse_state(self.backup_path, raw)

    def _check_on_disk(self, doc: StateDoc) -> None:
        """Raise unless writing `doc` over the file on disk is safe. The file is read only when it
        is not the one this store last read or wrote."""
        path = self.path
        stamp = stamp_of(path)
        if stamp is None:
            return
        if self._known is not None and self._known[0] == stamp:
            lineage, serial = self._known[1], self._known[2]
        else:
            try:
                raw = read_json(path)
                if raw is None:
                    return
                on_disk = parse_state(path, raw)
            except StateUnreadableError as e:
                raise self._unreadable(e) from e
            lineage, serial = on_disk.lineage, on_disk.serial
        if lineage != doc.lineage:
            raise StaleStateError(f"{path} has lineage {lineage}, not {doc.lineage}: refusing to overwrite")
        if serial > doc.serial:
            raise StaleStateError(f"{path} moved on (serial {serial} > {doc.serial})")

    def verify(self, doc: StateDoc) -> None:
        """`check` without the probe write: is state.json still one `doc` may replace?"""
        self._check_on_disk(doc)

    def probe_writable(self) -> None:
        """Raise StateUnwritableError unless the directory takes a small durable write."""
        probe = self.dir / PROBE_FILE
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, b"x" * 4096)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise StateUnwritableError(describe_os_error(e, self.dir)) from e
        finally:
            with contextlib.suppress(OSError):
                probe.unlink(missing_ok=True)

    def check(self, doc: StateDoc) -> None:
        """Raise (StateUnreadableError, StaleStateError, StateUnwritableError) when `doc` could
        not be saved now. The engine calls it before any action that changes what runs."""
        self._require_lock()
        self._check_on_disk(doc)
        self.probe_writable()

    def comparable(self, doc: StateDoc) -> str:
        """`doc` as saved but without `serial` and `updated_at` (what every save changes): equal
        texts, nothing to save. Records' texts are shared with `save` (reconciler.state.doc_json)."""
        return self._writer.dump(doc, exclude=_SAVE_STAMPS).decode()

    def save(self, doc: StateDoc) -> StateDoc:
        """Write `doc` with serial+1, keeping the file it replaces as the backup. Refuses when the
        file on disk is unreadable, belongs to another lineage or already has a serial past the one
        being written (someone else wrote it). An I/O failure is StateUnwritableError; `doc` is
        then left as it was (same serial)."""
        self._require_lock()
        path = self.path
        self._check_on_disk(doc)
        try:
            self._keep_backup()
            # Serialised as it is: no secret value is in the document (reconciler.state.redact).
            written = doc.model_copy(update={"serial": doc.serial + 1, "updated_at": time.time()})
            write_atomic(path, self._writer.dump(written), mode=FILE_MODE)
        except OSError as e:
            raise StateUnwritableError(describe_os_error(e, path)) from e
        doc.serial, doc.updated_at = written.serial, written.updated_at
        stamp = stamp_of(path)
        self._known = (stamp, doc.lineage, doc.serial) if stamp is not None else None
        return doc

    def _keep_backup(self) -> None:
        """Hard-link the current state.json (checked good by the caller) as the backup."""
        if not self.path.exists():
            return
        tmp = self.dir / f".{BACKUP_FILE}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.link(self.path, tmp)
        except OSError:
            # No hard links here (some network filesystems): copy, still atomically.
            write_atomic(self.backup_path, self.path.read_bytes())
            return
        os.replace(tmp, self.backup_path)

    def restore(self) -> tuple[StateDoc, Path | None]:
        """Put the backup back as state.json. The file it replaces (when any) is kept as
        `state.json.broken` for a post-mortem; returns (the restored doc, that path)."""
        backup = self.read_backup()
        if backup is None:
            raise StateError(f"there is no backup to restore ({self.backup_path} does not exist)")
        kept: Path | None = None
        try:
            if self.path.exists():
                # Linked, not moved: state.json never goes missing, even for a moment.
                kept = self.dir / f"{STATE_FILE}.broken"
                tmp = self.dir / f".{kept.name}.{os.getpid()}.tmp"
                tmp.unlink(missing_ok=True)
                os.link(self.path, tmp)
                os.replace(tmp, kept)
            write_atomic(self.path, self.backup_path.read_bytes())
        except OSError as e:
            raise StateUnwritableError(describe_os_error(e, self.path)) from e
        self._known = None
        return backup, kept
