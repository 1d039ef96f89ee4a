"""Leader election among the reconcilers that share one etcd prefix: a key under a lease.

Why: two reconcilers acting on one state would start every replica twice. Each `tidegate up`
campaigns by creating `<prefix>/leader` (value: who it is) under a lease of `ttl` seconds, in a
transaction that succeeds only when the key does not exist. The winner keeps the lease alive
(the policy below); the others retry every `retry` s and serve their gateway meanwhile. When the
leader dies (kill -9) its lease runs out and the key disappears: a standby leads within
ttl + retry seconds.

The leader's `Fence` is the key's create revision: a new leader necessarily creates the key again
(a higher revision), so a transaction conditioned on it (reconciler.state.etcd_store) can only be
committed by the leader that created it, even if that one wakes up from a pause believing it still
leads. On the leader's own side, leadership counts as lost (`lost` is set) as soon as a keepalive
is refused (the lease expired), the key is no longer its own, or the step-down deadline passes:
`margin` s before the lease can expire as far as this process can tell, i.e. the *send* time of
the last keepalive that succeeded plus the TTL etcd answered it with (the lease lives at least
that long: etcd received the request after it was sent). A watchdog thread keeps that deadline
even while a keepalive call hangs: the leader stops acting before another may start.

Keepalive policy: one etcd member of three dying (even the raft leader, even paused so that a
request to it hangs, on a loaded machine) must not make the leader step down. Until the others
elect a new raft leader (1-2 s idle, longer under load) no member renews a lease, and a follower
holds a renewal it got before the election (it forwards it to the old leader) until the client
gives up; renewals sent after the election are answered at once, and the new raft leader has
restarted every lease's full TTL. So: renew every `period` = (ttl - margin)/8 s (0.5 s with the
defaults: a member lost right after a renewal leaves ~3 s for the election; ttl/3 left ~2.3 s);
while renewals fail or hang, start a fresh one every RETRY_FAILED s (up to IN_FLIGHT at once,
each at most ATTEMPT s and never past the deadline) rather than wait for the one in flight; the
client asks members that just failed, or hold a request now, last (tidegate.etcd_transport).
The first renewal answered after the election moves the deadline a full TTL on from its send.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from reconciler.state.etcd_store import Fence
from tidegate.etcd import LEADER_KEY, EtcdClient, EtcdError, cmp_create_revision, op_put

log = logging.getLogger("tidegate.leader")

DEFAULT_TTL = 5
DEFAULT_RETRY = 0.5
# After a failed keepalive (or ownership check): the next attempt this soon, so that one is in
# flight when the cluster has a raft leader again.
RETRY_FAILED = 0.25
# A keepalive (and so the ownership check) gets at most this long: etcd answers on loopback/LAN
# in milliseconds; a member that holds a request this long is paused, drowning or waiting for an
# election, and a fresh request (to a member not holding one) is the better bet.
ATTEMPT = 1.0
# Renewals out at once while they fail or hang: ATTEMPT / RETRY_FAILED, one per retry tick.
IN_FLIGHT = 4


def node_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Leadership:
    def __init__(
        self,
        client: EtcdClient,
        node: str | None = None,
        ttl: int = DEFAULT_TTL,
        retry: float = DEFAULT_RETRY,
        margin: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.node = node or node_name()
        self.ttl = ttl
        self.retry = retry
        self.margin = margin
        self.clock = clock
        self.key = client.location.key(LEADER_KEY)
        self.fence: Fence | None = None
        self.lost = threading.Event()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._last_ok = 0.0  # when the last keepalive that succeeded was sent
        self._deadline = 0.0  # when to stop acting: margin s before the lease can expire
        self._lose_lock = threading.Lock()

    # -- campaigning -----------------------------------------------------------------------
    def try_acquire(self) -> bool:
        """One attempt: lead now (True) or not (False, someone else does or etcd is unreachable)."""
        try:
            sent = self.clock()
            lease = self.client.grant(self.ttl)
            ok, revision = self.client.txn(
                [cmp_create_revision(self.key, 0)], [op_put(self.key, self.node.encode(), lease)]
            )
        except EtcdError as e:
            log.debug("campaign: %s", e)
            return False
        if not ok:
            with contextlib.suppress(EtcdError):  # it expires by itself
                self.client.revoke(lease)
            return False
        self.fence = Fence(revision=revision, lease=lease)
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._last_ok = sent
        self._deadline = sent + self.ttl - self.margin
        self._thread = threading.Thread(
            target=self._keep, args=(self.fence, self._stop), name="tidegate-leader", daemon=True
        )
        self._thread.start()
        # A keepalive call can hang for a while on a dead endpoint (each one tried in turn):
        # the deadline is watched apart from it, so leading stops before the lease can expire.
        threading.Thread(target=self._watchdog, args=(self._stop,), name="tidegate-leader-deadline", daemon=True).start()
        log.info("leading %s as %s (revision %d)", self.client.location.describe(), self.node, revision)
        return True

    def campaign(self, stop: threading.Event) -> bool:
        """Block until this process leads (True) or `stop` is set (False)."""
        while not stop.is_set():
            if self.try_acquire():
                return True
            stop.wait(self.retry)
        return False

    def holder(self) -> str | None:
        """Who leads now (as the leader wrote it), or None."""
        kv = self.client.get(self.key)
        return None if kv is None else kv.value.decode(errors="replace")

    # -- leading ---------------------------------------------------------------------------
    @property
    def period(self) -> float:
        """Seconds between keepalives while they succeed (module docstring: the policy)."""
        return max((self.ttl - self.margin) / 8, 0.1)

    def _keep(self, fence: Fence, stop: threading.Event) -> None:
        """Renew every `period` s; while renewals fail or hang, start another every RETRY_FAILED s
        (at most IN_FLIGHT at once), so one is out soon after the cluster can answer again."""
        slots = threading.BoundedSemaphore(IN_FLIGHT)
        pause = self.period
        while not stop.wait(pause) and not self.lost.is_set():
            started = self.clock()
            if not slots.acquire(timeout=RETRY_FAILED):
                pause = 0.0
                continue
            done = threading.Event()
            renewed: list[bool] = []
            threading.Thread(
                target=self._renew_then,
                args=(fence, stop, slots, renewed, done),
                name="tidegate-leader-keepalive",
                daemon=True,
            ).start()
            if done.wait(RETRY_FAILED) and renewed == [True]:
                pause = self.period
            else:
                pause = max(0.0, RETRY_FAILED - (self.clock() - started))

    def _renew_then(
        self,
        fence: Fence,
        stop: threading.Event,
        slots: threading.BoundedSemaphore,
        renewed: list[bool],
        done: threading.Event,
    ) -> None:
        try:
            renewed.append(self._renew(fence, stop))
        finally:
            slots.release()
            done.set()

    def _renew(self, fence: Fence, stop: threading.Event) -> bool:
        """One keepalive and ownership check (True: the deadline moved on)."""
        sent = self.clock()
        left = self._deadline - sent
        if left <= 0:
            return False  # the watchdog says so
        try:  # at most ATTEMPT s each (a member refusing at once is passed over within it)
            remaining = self.client.keepalive(fence.lease, budget=min(ATTEMPT, left))
            left = self._deadline - self.clock()
            kv = self.client.get(self.key, budget=min(ATTEMPT, left)) if remaining > 0 else None
        except EtcdError as e:
            log.debug("keepalive: %s", e)
            return False
        if stop.is_set():
            return False  # resigned meanwhile: a revoked lease says nothing
        if remaining <= 0:
            self._lose("the lease expired", fence)
        elif kv is None or kv.create_revision != fence.revision:
            self._lose("another reconciler leads", fence)
        else:
            with self._lose_lock:
                if self.fence is not fence:  # lost meanwhile: a late answer must not move the deadline
                    return False
                self._last_ok = max(self._last_ok, sent)
                self._deadline = max(self._deadline, sent + remaining - self.margin)
            return True
        return False

    def _watchdog(self, stop: threading.Event) -> None:
        while not stop.wait(0.1) and not self.lost.is_set():
            if self.clock() > self._deadline:
                silent = self.clock() - self._last_ok
                self._lose(f"no keepalive answered for {silent:.1f}s (etcd out of reach)")
                return

    def _lose(self, why: str, fence: Fence | None = None) -> None:
        with self._lose_lock:
            if self.lost.is_set() or (fence is not None and self.fence is not fence):
                return
            log.warning("no longer leading %s: %s", self.client.location.describe(), why)
            self.fence = None
            self.lost.set()

    def resign(self) -> None:
        """Stop leading now (the lease is revoked, a standby takes over at once)."""
        self._stop.set()
        fence, self.fence = self.fence, None
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if fence is not None:
            with contextlib.suppress(EtcdError):  # it expires by itself
                self.client.revoke(fence.lease)
        self.lost.set()
