"""Leader election among the reconcilers that share one etcd prefix: a key under a lease.

Why: two reconcilers acting on one state would start every replica twice. Each `tidegate up`
campaigns by creating `<prefix>/leader` (value: who it is) under a lease of `ttl` seconds, in a
transaction that succeeds only when the key does not exist. The winner keeps the lease alive
(every ttl/3 s); the others retry every `retry` s and serve their gateway meanwhile. When the
leader dies (kill -9) its lease runs out and the key disappears: a standby leads within
ttl + retry seconds.

The leader's `Fence` is the key's create revision: a new leader necessarily creates the key again
(a higher revision), so a transaction conditioned on it (reconciler.state.etcd_store) can only be
committed by the leader that created it, even if that one wakes up from a pause believing it still
leads. On the leader's own side, leadership counts as lost (`lost` is set) as soon as a keepalive
is refused (the lease expired), the key is no longer its own, or no keepalive succeeded for
ttl - `margin` seconds (etcd unreachable: it must stop acting before another may start; a
watchdog thread keeps that deadline even while a keepalive call hangs).
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
        self._thread = threading.Thread(target=self._keep, name="tidegate-leader", daemon=True)
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
    def _keep(self) -> None:
        fence = self.fence
        assert fence is not None
        while not self._stop.wait(self.ttl / 3) and not self.lost.is_set():
            sent = self.clock()
            try:
                remaining = self.client.keepalive(fence.lease)
                kv = self.client.get(self.key)
            except EtcdError as e:
                log.debug("keepalive: %s", e)
                continue
            if remaining <= 0:
                self._lose("the lease expired")
                return
            if kv is None or kv.create_revision != fence.revision:
                self._lose("another reconciler leads")
                return
            self._last_ok = max(self._last_ok, sent)

    def _watchdog(self, stop: threading.Event) -> None:
        while not stop.wait(0.1) and not self.lost.is_set():
            silent = self.clock() - self._last_ok
            if silent > self.ttl - self.margin:
                self._lose(f"no keepalive answered for {silent:.1f}s (etcd out of reach)")
                return

    def _lose(self, why: str) -> None:
        with self._lose_lock:
            if self.lost.is_set():
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
