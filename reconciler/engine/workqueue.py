"""A work queue keyed by service name and the bounded pool of workers that drains it.

Why: one service's slow backend call (a VM that takes minutes to boot, a hung API) must not hold
back any other service. The queue follows client-go's `util/workqueue`, the queue every
Kubernetes controller runs on:

- keys, not objects: a worker gets a service name and reads what to do from the engine;
- stingy: a key added several times before a worker takes it is processed once;
- a key is never processed by two workers at once: an `add` while it is processing is deferred
  (the key is marked dirty) and queued again when the worker calls `done`;
- `add_after` for requeues ("look again in 5 s") and `add_rate_limited` for retries with a
  per-key exponential backoff that `forget` resets after a success.

`WorkerPool` runs a handler over the queue on a fixed number of threads (the backends are
synchronous SDKs, so threads, not asyncio). The handler returns seconds until the key wants to be
looked at again (or None); an exception is logged with the key and retried with backoff — the
loop boundary of STYLE.md, per key.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger("tidegate.workqueue")


class ExponentialRateLimiter:
    """Per-key delay: base, 2*base, 4*base … capped (client-go's ItemExponentialFailureRateLimiter)."""

    def __init__(self, base: float = 1.0, cap: float = 300.0) -> None:
        self.base = base
        self.cap = cap
        self._failures: dict[str, int] = {}
        self._lock = threading.Lock()

    def when(self, key: str) -> float:
        with self._lock:
            n = self._failures.get(key, 0)
            self._failures[key] = n + 1
        return float(min(self.cap, self.base * (2**n)))

    def forget(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)

    def requeues(self, key: str) -> int:
        with self._lock:
            return self._failures.get(key, 0)


class WorkQueue:
    """Fair, stingy, one-worker-per-key queue with delayed and rate-limited adds. Thread-safe."""

    def __init__(
        self,
        limiter: ExponentialRateLimiter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limiter = limiter or ExponentialRateLimiter()
        self._clock = clock
        self._queue: deque[str] = deque()
        self._dirty: set[str] = set()  # wants processing (queued, or deferred behind a worker)
        self._processing: set[str] = set()
        self._waiting: list[tuple[float, int, str]] = []  # (ready at, tiebreak, key): add_after
        self._counter = itertools.count()
        self._cond = threading.Condition()
        self._shutting_down = False

    # -- adding ----------------------------------------------------------------------------------
    def add(self, key: str) -> None:
        with self._cond:
            self._add_locked(key)

    def _add_locked(self, key: str) -> None:
        if self._shutting_down or key in self._dirty:
            return
        self._dirty.add(key)
        if key in self._processing:
            return  # deferred: `done` queues it again, so one key never runs twice at once
        self._queue.append(key)
        self._cond.notify()

    def add_after(self, key: str, delay: float) -> None:
        """Add `key` once `delay` seconds have passed (at once when `delay` <= 0)."""
        if delay <= 0:
            self.add(key)
            return
        with self._cond:
            if self._shutting_down:
                return
            heapq.heappush(self._waiting, (self._clock() + delay, next(self._counter), key))
            self._cond.notify_all()  # a getter may have to wake earlier than it planned

    def add_rate_limited(self, key: str) -> float:
        """Retry `key` after its backoff (which grows with every call until `forget`)."""
        delay = self.limiter.when(key)
        self.add_after(key, delay)
        return delay

    def forget(self, key: str) -> None:
        """The key succeeded: its next failure starts the backoff from the base again."""
        self.limiter.forget(key)

    def requeues(self, key: str) -> int:
        return self.limiter.requeues(key)

    # -- taking ----------------------------------------------------------------------------------
    def _promote_due(self) -> float | None:
        """Move due delayed keys into the queue; seconds until the next one is due (or None)."""
        now = self._clock()
        while self._waiting and self._waiting[0][0] <= now:
            _, _, key = heapq.heappop(self._waiting)
            self._add_locked(key)
        return self._waiting[0][0] - now if self._waiting else None

    def get(self, timeout: float | None = None) -> str | None:
        """The next key to process (the caller must call `done(key)`), or None on shutdown or
        after `timeout` seconds without one."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while True:
                next_due = self._promote_due()
                if self._queue:
                    key = self._queue.popleft()
                    self._processing.add(key)
                    self._dirty.discard(key)
                    return key
                if self._shutting_down:
                    return None
                wait = next_due
                if deadline is not None:
                    left = deadline - self._clock()
                    if left <= 0:
                        return None
                    wait = left if wait is None else min(wait, left)
                self._cond.wait(wait)

    def done(self, key: str) -> None:
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty and not self._shutting_down:
                self._queue.append(key)
                self._cond.notify()
            self._cond.notify_all()  # `wait_idle` callers

    # -- state -----------------------------------------------------------------------------------
    def busy(self, key: str) -> bool:
        """True while `key` is queued or being processed (not counting a delayed add)."""
        with self._cond:
            return key in self._dirty or key in self._processing

    def busy_keys(self) -> set[str]:
        with self._cond:
            return self._dirty | self._processing

    def processing(self) -> set[str]:
        with self._cond:
            return set(self._processing)

    def __len__(self) -> int:
        with self._cond:
            return len(self._queue)

    def wait_idle(self, keys: set[str], timeout: float | None = None) -> bool:
        """Block until none of `keys` is queued or processing; False on timeout."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while (self._dirty | self._processing) & keys:
                if self._shutting_down and not self._processing & keys:
                    return True
                left = None if deadline is None else deadline - self._clock()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def shutdown(self) -> None:
        """Stop handing out keys: `get` returns None once the queue is empty; adds are ignored."""
        with self._cond:
            self._shutting_down = True
            self._queue.clear()
            self._dirty.clear()
            self._waiting.clear()
            self._cond.notify_all()

    @property
    def shutting_down(self) -> bool:
        with self._cond:
            return self._shutting_down


# What a worker runs for one key: seconds until the key wants another look (requeue after), or
# None. Raising retries the key with the queue's rate limiter.
Handler = Callable[[str], "float | None"]


class WorkerPool:
    """`size` threads taking keys from `queue` and running `handler` on each."""

    def __init__(self, queue: WorkQueue, handler: Handler, size: int, name: str = "tidegate-worker") -> None:
        if size < 1:
            raise ValueError("a worker pool needs at least one worker")
        self.queue = queue
        self.handler = handler
        self.size = size
        self.name = name
        self._threads: list[threading.Thread] = []
        self.errors: dict[str, str] = {}  # key -> last unexpected error (cleared by a success)

    def start(self) -> None:
        for i in range(self.size):
            t = threading.Thread(target=self._run, name=f"{self.name}-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def _run(self) -> None:
        while True:
            key = self.queue.get()
            if key is None:
                return
            try:
                again = self.handler(key)
            except Exception as e:  # the per-key boundary: log with the key, retry with backoff
                delay = self.queue.add_rate_limited(key)
                self.errors[key] = f"{type(e).__name__}: {e}"
                log.exception("%s: work failed; retrying in %.1fs", key, delay)
            else:
                self.errors.pop(key, None)
                self.queue.forget(key)
                if again is not None:
                    self.queue.add_after(key, again)
            finally:
                self.queue.done(key)

    def stop(self, timeout: float = 10.0) -> list[str]:
        """Shut the queue down and wait up to `timeout` s for running work; returns the keys still
        being processed then (their threads are daemons: the process may exit under them, and the
        journal settles what they started on the next start)."""
        self.queue.shutdown()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return sorted(self.queue.processing())
