"""What a local replica's folder says about it: the `replica.json` written at start, and the
`ReplicaInfo` read back from that file, the exit file and the live processes.

Why a module of its own: `LocalBackend` decides when to start, stop and adopt; this module owns
the one record format those decisions leave behind and how a status is derived from it, so a
new backend instance (or another process) reads a replica exactly as its creator described it.
"""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backends.base import ReplicaInfo, ReplicaSpec, ReplicaStatus
from backends.local import host as local_host
from backends.local import proc as local_proc
from backends.local.layout import ReplicaPaths, read_json
from backends.local.proc import ProcessIdentity

SCHEMA_VERSION = 1
MESSAGE_LOG_LINES = 5

Logs = Callable[[str, int], list[str]]  # (replica_id, lines) -> the last log lines


def start_meta(
    spec: ReplicaSpec,
    owner: str,
    *,
    engine: str | None,
    host_port: int | None,
    network: str,
    socket: Path,
    venv: Path | None,
    attempt: int,
) -> dict[str, Any]:
    """`replica.json` as written before anything is spawned (state "starting", no pid yet)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "replica_id": spec.replica_id,
        "service": spec.service,
        "spec_hash": spec.spec_hash,
        "ordinal": spec.ordinal,
        "port": spec.port,
        "owner": owner,
        "env_names": sorted(spec.env),
        "python": spec.python,
        "image": spec.image,
        "engine": engine,
        "host_port": host_port,
        "revision": spec.revision,
        "network": network,
        "socket": str(socket),
        "venv": str(venv) if venv else None,
        "attempt": attempt,
        "created_at": time.time(),
        "state": "starting",
        # The supervisor starts only while this is still here; every stop revokes it first.
        "start_token": secrets.token_hex(16),
        "pid": None,
        "started": None,
    }


def recorded(meta: dict[str, Any] | None) -> ProcessIdentity | None:
    if meta is None or meta.get("pid") is None or meta.get("started") is None:
        return None
    return ProcessIdentity(int(meta["pid"]), float(meta["started"]))


def replica_info(
    backend: str, owner: str, paths: ReplicaPaths, logs: Logs, *, holding_lock: bool = False
) -> ReplicaInfo | None:
    """What the replica folder and its processes say: None when it is not `owner`'s."""
    replica_id = paths.replica_id
    meta = read_json(paths.meta)
    if meta is None or meta.get("owner") != owner:
        return None
    leader = recorded(meta)
    if leader is not None and not local_proc.is_alive(leader):
        leader = None
    if leader is None and meta.get("pid") is None:
        leader = local_proc.find_supervisor(str(paths.dir))  # spawned, pid not yet recorded
    base: dict[str, Any] = {
        "replica_id": replica_id,
        "backend": backend,
        "service": meta.get("service"),
        "spec_hash": meta.get("spec_hash"),
        # The machine that runs it: only there is its socket reachable (`ps` says where it runs).
        "tags": {"owner": owner, "network": str(meta.get("network")), "machine": socket.gethostname()},
    }
    state = meta.get("state")
    if state == "deleting":
        alive = leader is not None or bool(local_proc.marked_processes(str(paths.dir)))
        status = ReplicaStatus.TERMINATING if alive else ReplicaStatus.GONE
        return ReplicaInfo(status=status, message="being deleted", **base)
    if leader is not None:
        provisioning = paths.provisioning.exists()
        return ReplicaInfo(
            status=ReplicaStatus.PROVISIONING if provisioning else ReplicaStatus.RUNNING,
            message="creating the virtualenv" if provisioning else None,
            address=f"unix://{meta.get('socket') or paths.socket}",
            handle=leader.handle,
            started_at=leader.started,
            **base,
        )
    if state == "starting" and not holding_lock and local_host.lock_is_held(paths.lock):
        return ReplicaInfo(status=ReplicaStatus.PROVISIONING, message="starting", **base)
    return ReplicaInfo(
        status=ReplicaStatus.EXITED,
        message=exit_message(paths, meta, logs),
        started_at=meta.get("started") or None,
        **base,
    )


def exit_message(paths: ReplicaPaths, meta: dict[str, Any], logs: Logs) -> str:
    exit_info = read_json(paths.exit_file)
    if exit_info is not None:
        code = int(exit_info.get("returncode", -1))
        head = f"exited with code {code}" if code >= 0 else f"killed by signal {-code}"
    elif meta.get("state") == "starting":
        head = "start was interrupted before the replica ran"
    else:
        head = "the replica's processes vanished without an exit status (killed?)"
    last = logs(paths.replica_id, MESSAGE_LOG_LINES)
    return head + ("; last log lines:\n" + "\n".join(last) if last else "")
