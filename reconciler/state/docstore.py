"""The state store interface: named documents, kept in the state directory or on etcd.

Why an interface: one machine keeps its state in a directory (`--state DIR`, the default, files
as they have always been); several machines share theirs on etcd (`--state etcd://…/<prefix>`).
What the reconciler and the CLI share across machines — `state.json`, `installation.json`, the
journal's entries, `routes.json`, `tokens.json`, preview decisions, signals, gateway stats — is a
document with a name (`journal/000000000007`, `signals/<name>.json`); both stores answer the same
calls with the same meaning (tests/reconciler/state/test_docstore_contract.py runs both):

- `get(name)` the bytes, or None; `list(prefix)` every document under a prefix, by name, sorted;
- `put(name, body)` replaces atomically (a reader sees the old or the new bytes, never a mix);
- `create(name, body)` writes only when absent (False when it exists: someone else created it);
- `delete(name)` removes (absent is fine).

The directory store writes through `tidegate.fsio.write_atomic` (temp file, fsync, replace,
directory fsync) with 0600 files in 0700 folders, as the rest of the state directory. What stays
per machine (replica working dirs, venvs, local replica logs, the repos cache) is never a document:
it lives in the local directory whichever store holds the shared state.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Protocol

from reconciler.state.errors import StateError, StateUnwritableError
from tidegate.fsio import describe_os_error, fsync_dir, write_atomic


class DocStore(Protocol):
    def describe(self) -> str: ...

    def get(self, name: str) -> bytes | None: ...

    def list(self, prefix: str) -> dict[str, bytes]: ...

    def put(self, name: str, body: bytes) -> None: ...

    def create(self, name: str, body: bytes) -> bool: ...

    def delete(self, name: str) -> None: ...


def check_name(name: str) -> str:
    """A document name: relative, `/`-separated, no `.`/`..` parts, no hidden temp names."""
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        raise StateError(f"invalid document name {name!r}")
    return name


class DirStore:
    """Documents as files under one directory (today's state directory layout)."""

    def __init__(self, folder: Path) -> None:
        self.dir = Path(folder)

    def describe(self) -> str:
        return str(self.dir)

    def _path(self, name: str) -> Path:
        return self.dir / check_name(name)

    def get(self, name: str) -> bytes | None:
        try:
            return self._path(name).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        except OSError as e:
            raise StateError(
                f"cannot read {self._path(name)}: {describe_os_error(e, self._path(name))}"
            ) from e

    def list(self, prefix: str) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        if not self.dir.is_dir():
            return out
        for path in sorted(self.dir.rglob("*")):
            rel = path.relative_to(self.dir).as_posix()
            if (
                not rel.startswith(prefix)
                or not path.is_file()
                or any(p.startswith(".") for p in rel.split("/"))
            ):
                continue
            with contextlib.suppress(FileNotFoundError):
                out[rel] = path.read_bytes()
        return out

    def put(self, name: str, body: bytes) -> None:
        path = self._path(name)
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomic(path, body, mode=0o600)
        except OSError as e:
            raise StateUnwritableError(describe_os_error(e, path)) from e

    def create(self, name: str, body: bytes) -> bool:
        path = self._path(name)
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.create.tmp")
            write_atomic(tmp, body, mode=0o600)
            try:
                os.link(tmp, path)  # atomic create-if-absent
            except FileExistsError:
                return False
            finally:
                tmp.unlink(missing_ok=True)
            fsync_dir(path.parent)
        except OSError as e:
            raise StateUnwritableError(describe_os_error(e, path)) from e
        return True

    def delete(self, name: str) -> None:
        path = self._path(name)
        try:
            path.unlink(missing_ok=True)
        except OSError as e:
            raise StateUnwritableError(describe_os_error(e, path)) from e
