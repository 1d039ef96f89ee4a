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
- termination: SIGTERM to the process group and to every marked process, a grace period, then
  SIGKILL to whatever is left. A sandboxed replica's bwrap carries no mark in its environment (a
  SIGTERM to it would SIGKILL the sandbox at once, with no graceful stop for the app); it is
  recognised by the mark on its command line (`--setenv TIDEGATE_REPLICA_DIR <dir>`), waited for,
  and killed only if it outlives the grace period. That also covers a stop that lands while the
  sandbox is still starting: its processes are marked only once they exec, so the marked set is
  scanned again while waiting.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil

MARK_REPLICA = "TIDEGATE_REPLICA"
MARK_DIR = "TIDEGATE_REPLICA_DIR"
MARK_OWNER = "TIDEGATE_OWNER"
START_TIME_TOLERANCE = 0.05  # seconds; create_time is derived from clock ticks, stable per process
POLL_SECONDS = 0.05


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


def sandbox_processes(replica_dir: str) -> list[psutil.Process]:
    """The bwrap processes of the replica's sandbox (by the `--setenv` mark on their command line)."""
    found: list[psutil.Process] = []
    for proc in psutil.process_iter():
        try:
            cmd = proc.cmdline()
            if not cmd or not cmd[0].endswith("bwrap") or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if any(cmd[i : i + 3] == ["--setenv", MARK_DIR, replica_dir] for i in range(len(cmd) - 2)):
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


def _signal_all(leader: ProcessIdentity | None, procs: list[psutil.Process], signum: int) -> None:
    if leader is not None and is_alive(leader):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(leader.pid) == leader.pid:
                os.killpg(leader.pid, signum)
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            proc.send_signal(signum)


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    left: list[psutil.Process] = []
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(proc)
    return left


def terminate_replica(
    leader: ProcessIdentity | None,
    replica_dir: str,
    grace: float,
    reap: Callable[[], None] = lambda: None,
) -> None:
    """SIGTERM the replica's group and marked processes, wait `grace` seconds, then SIGKILL.

    `reap` is called while waiting so that a supervisor which is our own child does not linger
    as a zombie (a zombie counts as gone).
    """
    procs = marked_processes(replica_dir)
    boxes = sandbox_processes(replica_dir)
    if leader is not None and is_alive(leader):
        with contextlib.suppress(psutil.NoSuchProcess):
            procs.append(psutil.Process(leader.pid))
    if not procs and not boxes:
        return
    _signal_all(leader, procs, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while True:
        reap()
        procs, boxes = _alive(procs), _alive(boxes)
        if boxes:  # a sandbox still starting: what it runs is marked once it has exec'd
            late = [p for p in marked_processes(replica_dir) if p not in procs]
            _signal_all(None, late, signal.SIGTERM)
            procs += late
        if (not procs and not boxes) or time.monotonic() >= deadline:
            break
        time.sleep(POLL_SECONDS)
    if procs or boxes:
        everything = procs + boxes + marked_processes(replica_dir) + sandbox_processes(replica_dir)
        _signal_all(leader, everything, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while _alive(everything) and time.monotonic() < deadline:
            reap()
            time.sleep(POLL_SECONDS)
    reap()
