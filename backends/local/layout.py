"""The on-disk layout of a local replica and the script it runs.

Why it exists: the local backend, `tidegate logs` and the tests all need to agree on where a
replica's metadata, files, logs and socket live, and on what `run.sh` contains. Paths and the
script are computed here by pure functions; the only I/O is small JSON/log reading and writing
(JSON written atomically: temp file, fsync, `os.replace`, directory fsync).

`run.sh` is the spec's `commands`, one per line under `set -e`, as dstack runs them. For an
`image:` it is one `exec docker|podman run …` line: the port is published on a loopback port of
the host chosen at start, env values are passed by name only (`-e NAME`, the engine client reads
them from its own environment), and the repository copy is mounted at `/workflow`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backends.base import ReplicaSpec
from tidegate import fsio as fsutil

SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; keep a margin
CONTAINER_WORKDIR = "/workflow"


@dataclass(frozen=True)
class ReplicaPaths:
    root: Path
    replica_id: str

    @property
    def dir(self) -> Path:
        return self.root / self.replica_id

    @property
    def meta(self) -> Path:
        return self.dir / "replica.json"

    @property
    def work(self) -> Path:
        return self.dir / "work"

    @property
    def home(self) -> Path:
        return self.dir / "home"

    @property
    def tmp(self) -> Path:
        """TMPDIR of an unsandboxed replica (a sandboxed one has a private tmpfs on /tmp)."""
        return self.dir / "tmp"

    @property
    def script(self) -> Path:
        return self.dir / "run.sh"

    @property
    def log(self) -> Path:
        return self.dir / "logs" / "replica.log"

    @property
    def log_backup(self) -> Path:
        return self.dir / "logs" / "replica.log.1"

    @property
    def exit_file(self) -> Path:
        return self.dir / "exit.json"

    @property
    def provisioning(self) -> Path:
        return self.dir / "provisioning"

    @property
    def relay_err(self) -> Path:
        return self.dir / "relay.err"

    @property
    def lock(self) -> Path:
        return self.root / ".locks" / f"{self.replica_id}.lock"

    @property
    def kept_log(self) -> Path:
        return self.root / ".logs" / f"{self.replica_id}.log"

    @property
    def socket(self) -> Path:
        return socket_path(self.dir)


def socket_path(replica_dir: Path) -> Path:
    """`<dir>/http.sock`, or a short stable path in the temp dir when that is too long to bind."""
    path = replica_dir / "http.sock"
    if len(str(path)) <= SOCKET_PATH_MAX:
        return path
    digest = hashlib.sha256(str(replica_dir).encode()).hexdigest()[:20]
    return Path(tempfile.gettempdir()) / f"tidegate-{os.getuid()}" / f"{digest}.sock"


def container_name(replica_id: str) -> str:
    return f"tidegate-{replica_id}"


def script_for(
    spec: ReplicaSpec, *, engine: str | None, owner: str, host_port: int | None, work: Path
) -> str:
    """The bash script a replica runs (see the module docstring)."""
    if spec.image is None:
        return "set -e\n" + "\n".join(spec.commands) + "\n"
    assert engine is not None and host_port is not None
    argv = [
        engine, "run", "--rm", "--init",
        "--name", container_name(spec.replica_id),
        "--label", f"tidegate.owner={owner}",
        "--label", f"tidegate.replica={spec.replica_id}",
        "-p", f"127.0.0.1:{host_port}:{spec.port}",
        "-v", f"{work}:{CONTAINER_WORKDIR}",
        "-w", CONTAINER_WORKDIR,
    ]  # fmt: skip
    for name in sorted(spec.env):
        argv += ["-e", name]
    if spec.requirements.gpu is not None:
        argv += ["--gpus", "all"]
    argv.append(spec.image)
    if spec.commands:
        argv += ["/bin/sh", "-c", " && ".join(spec.commands)]
    return "set -e\nexec " + shlex.join(argv) + "\n"


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Replica meta: never creates the replica folder (a removed replica stays removed); 0644 as
    it was before the shared helper (whose temp files start 0600)."""
    fsutil.write_json_atomic(path, data, indent=1, sort_keys=True, mode=0o644, mkdir=False)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def tail(paths: Sequence[Path], lines: int) -> list[str]:
    """Last `lines` lines across files given oldest first (a rotated backup, then the log)."""
    collected: list[str] = []
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            collected.extend(path.read_bytes().decode("utf-8", errors="replace").splitlines())
    return collected[-lines:] if lines > 0 else []
