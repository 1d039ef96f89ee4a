"""Stopping a local replica for good: when `terminate_replica` returns, no process of the replica
exists, and none can appear later.

Why it exists: a replica is a tree of processes that is still growing while it starts — the
supervisor forks the egress proxy and the sandbox, bwrap clones the sandbox's init, which forks
the command. Several of those steps carry no mark yet: a fork that has not exec'd bwrap (the
supervisor strips the marks from bwrap's environment), bwrap's cloned child while it sets up the
mounts (and which has no `PR_SET_PDEATHSIG` yet, so it outlives a supervisor that dies then). A
stop that signals only what carries a mark at the moment it looks, and returns when those are
gone, can return while such a process goes on to start the app: a leak of an untrusted process,
found once under load. Waiting for "the marked set is empty" is not a proof that nothing is left.

What makes the answer exact is the session. The supervisor leads its own session (the backend
starts it with `setsid`), every process it starts inherits that session at fork, before it is
visible in /proc, and none of ours leaves it (bwrap runs without `--new-session`). The kernel
keeps a session id allocated while any process is in that session, so "sid == the supervisor's
pid" names exactly the replica's processes, marked or not, for as long as any of them exists.
A process inside the sandbox could call setsid, but it lives in the sandbox's PID namespace,
which the kernel kills whole when the namespace's init (bwrap, in the session) dies. Only an
unsandboxed replica (a trusted service on a machine without bwrap; previews never run so) could
escape both nets, by leaving the session and rewriting its own environment: trusted code.

So a stop here:

1. learns the replica's sessions: the recorded supervisor's (if that identity is still alive),
   the session of every process carrying the replica's mark (environment, or bwrap's command
   line), re-learned on every scan;
2. SIGTERMs the supervisor's process group and every marked process (a graceful stop for the
   app; never bwrap, whose death would SIGKILL the sandbox at once), rescanning while it waits up
   to `grace` seconds for the replica to exit by itself;
3. then SIGKILLs every member — marked, sandbox or same session — and scans again, until two
   scans in a row find nothing. A process of the replica can only be created by a process of the
   replica, so once none is left none can appear: the stop is final. If SIGKILL does not end them
   within `KILL_DEADLINE` (a process stuck in the kernel), `StillRunning` says so instead of
   pretending.

The one process no scan can see is the supervisor of a creator killed between fork and exec (it
still carries the creator's environment and session). The supervisor therefore checks, as its
first act after exec, that `replica.json` still carries the start token it was launched with
(relay.py `--start-token`), and every stop revokes that token *before* it scans: either the scan
sees the exec'd supervisor, or the supervisor sees the revoked token and exits without starting
anything.

A session id is tracked only while processes of it are seen, so a pid reused after the session
emptied (a wrap-around of the pid space within one poll) is never mistaken for the replica; and
the caller's own session is never a target.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum

import psutil

from backends.local.proc import MARK_DIR, ProcessIdentity, is_alive, is_sandbox_command

POLL_SECONDS = 0.05
KILL_DEADLINE = 30.0  # seconds of SIGKILL rounds before a survivor is reported (D state, say)
QUIET_SCANS = 2  # consecutive empty scans that end a stop (a process mid-exec reads as unmarked)
QUIET_GAP = 0.01  # seconds between them: an exec takes far less


class Mark(Enum):
    ENV = "env"  # the replica's mark in its environment: the supervisor, the app, its children
    SANDBOX = "sandbox"  # bwrap of the replica (the mark on its command line): SIGKILL only
    NONE = "none"


class StillRunning(Exception):
    """Processes of a replica survived SIGKILL for `KILL_DEADLINE` seconds; the stop is unfinished."""


@dataclass
class ReplicaProcesses:
    """Every live process of one replica: marked, its sandbox, or in one of its sessions."""

    replica_dir: str
    sessions: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._own_session = os.getsid(0)
        self.sessions -= {0, self._own_session}
        self._absent: set[int] = set()

    def scan(self) -> tuple[list[psutil.Process], set[int]]:
        """(members, pids of those marked in their environment: the ones a graceful stop signals).
        Zombies are gone: they run nothing and fork nothing."""
        self.sessions -= {0, self._own_session}
        seen: set[int] = set()  # sessions with any process in them, zombies included
        found: list[tuple[psutil.Process, int, Mark]] = []
        for proc in psutil.process_iter():
            if proc.pid == os.getpid():
                continue
            try:
                sid = os.getsid(proc.pid)
                seen.add(sid)
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
                mark = self._mark(proc)
            except (OSError, psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue  # gone, or not ours to read (we run as root where it matters)
            if mark is not Mark.NONE and sid not in (0, self._own_session):
                self.sessions.add(sid)
            found.append((proc, sid, mark))
        # An empty session never gets members again: forget its number (it may be reused). Absent
        # from two scans in a row, not one: a member forked while this scan ran is not listed.
        gone = self.sessions - seen
        self.sessions -= gone & self._absent
        self._absent = gone
        members = [proc for proc, sid, mark in found if mark is not Mark.NONE or sid in self.sessions]
        return members, {proc.pid for proc, _, mark in found if mark is Mark.ENV}

    def _mark(self, proc: psutil.Process) -> Mark:
        if proc.environ().get(MARK_DIR) == self.replica_dir:
            return Mark.ENV
        return Mark.SANDBOX if is_sandbox_command(proc.cmdline(), self.replica_dir) else Mark.NONE


def _signal(procs: Iterable[psutil.Process], signum: int) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            proc.send_signal(signum)  # psutil checks the start time first: a reused pid is spared


def terminate_replica(
    leader: ProcessIdentity | None,
    replica_dir: str,
    grace: float,
    reap: Callable[[], None] = lambda: None,
    sessions: Iterable[int] = (),
) -> None:
    """Stop every process of the replica for good (see the module docstring); StillRunning if
    SIGKILL did not end them. The caller has revoked the replica's start token already.

    `sessions`: session ids the caller knows to be the replica's (its own unreaped supervisor
    child, whose pid cannot be reused). `reap` is called while waiting so that a supervisor which
    is our own child does not linger as a zombie (a zombie counts as gone).
    """
    tracked = ReplicaProcesses(replica_dir, set(sessions))
    if leader is not None and is_alive(leader):
        tracked.sessions.add(leader.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(leader.pid) == leader.pid:
                os.killpg(leader.pid, signal.SIGTERM)  # supervisor, egress proxy, venv build
    members, marked = tracked.scan()
    termed: set[int] = set()
    deadline = time.monotonic() + grace
    while members:
        # Graceful: what is marked (the app once it has exec'd); never bwrap, whose death SIGKILLs
        # the sandbox at once, nor an unmarked member (a fork that has not exec'd yet).
        late = [p for p in members if p.pid in marked and p.pid not in termed]
        _signal(late, signal.SIGTERM)
        termed.update(p.pid for p in late)
        if time.monotonic() >= deadline:
            break
        time.sleep(POLL_SECONDS)
        reap()
        members, marked = tracked.scan()
    _kill_until_none(tracked, members, reap)


def _kill_until_none(tracked: ReplicaProcesses, members: list[psutil.Process], reap: Callable[[], None]) -> None:
    deadline = time.monotonic() + KILL_DEADLINE
    quiet = 0
    while quiet < QUIET_SCANS:
        if members:
            quiet = 0
            _signal(members, signal.SIGKILL)
            if time.monotonic() >= deadline:
                alive = ", ".join(f"{p.pid}" for p in members)
                raise StillRunning(f"processes of {tracked.replica_dir} survived SIGKILL: {alive}")
        else:
            quiet += 1
        time.sleep(POLL_SECONDS / 2 if members else QUIET_GAP)
        reap()
        members, _ = tracked.scan()
