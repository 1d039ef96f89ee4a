"""Process identity, discovery and termination for the local backend.

Why it exists: the local backend must recognise its replicas after the reconciler restarts
(adoption), must never mistake a recycled pid for its replica, and must be able to find a replica
it spawned even if it was killed before recording the pid. Three mechanisms, in that order:

- identity: a replica's supervisor is recorded as `pid` + process start time (psutil
  `create_time`, derived from /proc/<pid>/stat starttime); a live process with the same pid but
  another start time is a different process (pid reuse).
- marks: every process of a replica inherits `TIDEGATE_REPLICA_DIR=<abs replica dir>` (plus the
  replica id and owner) in its environment, so `/proc` can be scanned for it. The supervisor is
  the marked process that leads its own session.
- termination lives in stop.py: it adds the session (the supervisor leads its own, and every
  process it starts stays in it, marked or not) and makes a stop final.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import psutil

MARK_REPLICA = "TIDEGATE_REPLICA"
MARK_DIR = "TIDEGATE_REPLICA_DIR"
MARK_OWNER = "TIDEGATE_OWNER"
START_TIME_TOLERANCE = 0.05  # seconds; create_time is derived from clock ticks, stable per process


@dataclass(frozen=True)
class ProcessIdentity:
    """A process as pid + start time, immune to pid reuse."""

    pid: int
    started: float

    @property
    def handle(self) -> str:
        return f"{self.pid}:{self.started:.3f}"


def identify(pid: int) -> ProcessIdentity | None:
    """The identity of a live (non-zombie) process, or None."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return ProcessIdentity(pid, proc.create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def is_alive(identity: ProcessIdentity) -> bool:
    current = identify(identity.pid)
    return current is not None and abs(current.started - identity.started) < START_TIME_TOLERANCE


def marked_processes(replica_dir: str) -> list[psutil.Process]:
    """Every live process whose environment carries the mark of `replica_dir`."""
    found: list[psutil.Process] = []
    for proc in psutil.process_iter():
        try:
            if proc.pid == os.getpid() or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get(MARK_DIR) == replica_dir:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def is_sandbox_command(cmd: list[str], replica_dir: str) -> bool:
    """bwrap started for this replica: the marks are on its command line (`--setenv` …)."""
    if not cmd or not cmd[0].endswith("bwrap"):
        return False
    return any(cmd[i : i + 3] == ["--setenv", MARK_DIR, replica_dir] for i in range(len(cmd) - 2))


def sandbox_processes(replica_dir: str) -> list[psutil.Process]:
    """The bwrap processes of the replica's sandbox (by the `--setenv` mark on their command line)."""
    found: list[psutil.Process] = []
    for proc in psutil.process_iter():
        try:
            if is_sandbox_command(proc.cmdline(), replica_dir) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def find_supervisor(replica_dir: str) -> ProcessIdentity | None:
    """The marked process leading its own session (the relay started with a new session)."""
    for proc in marked_processes(replica_dir):
        try:
            if os.getsid(proc.pid) == proc.pid:
                return ProcessIdentity(proc.pid, proc.create_time())
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return None
