"""Dispatch: each service's planned steps run on a worker, so no service waits for another.

Why: a pass decides for every service at once (observe, targets, the pure `plan()`), which is
cheap; applying is where the time goes (a VM boot, a hung cloud API). The pass hands each
service's steps to the work queue (reconciler.engine.workqueue), keyed by service name, and
returns; a bounded pool of workers applies them, one worker per service at a time. While a
service's work is queued or running the pass leaves that service alone (`busy()`): it neither
plans it again nor folds half-done backend state into its record; the next pass after the work
settles plans it from what then runs (level-based, so nothing is lost by skipping).

A worker that settles calls `on_settled(service)` — the loop wakes a pass, which probes the new
replicas, writes state and publishes routes. Outcomes are kept until a pass reports them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence

from reconciler.engine.apply import ServiceOutcome
from reconciler.engine.desired import DesiredService
from reconciler.engine.plan import Step
from reconciler.engine.workqueue import ExponentialRateLimiter, WorkerPool, WorkQueue

log = logging.getLogger("tidegate.dispatch")

# (service, its steps, the desired specs they were planned from) -> what happened
ApplyService = Callable[[str, Sequence[Step], Mapping[str, DesiredService]], ServiceOutcome]


class Dispatcher:
    def __init__(self, size: int, apply_service: ApplyService, backoff_base: float = 2.0, backoff_max: float = 300.0) -> None:
        self.queue = WorkQueue(ExponentialRateLimiter(backoff_base, backoff_max))
        self._apply = apply_service
        self._lock = threading.Lock()
        self._work: dict[str, tuple[tuple[Step, ...], Mapping[str, DesiredService]]] = {}
        self._outcomes: dict[str, ServiceOutcome] = {}
        self.on_settled: Callable[[str], None] | None = None
        self.pool = WorkerPool(self.queue, self._handle, size)
        self._started = False

    def busy(self) -> set[str]:
        """Services whose work is queued or running."""
        return self.queue.busy_keys()

    def submit(self, steps: Sequence[Step], specs: Mapping[str, DesiredService]) -> set[str]:
        """Queue every service's steps (services already busy are the caller's to leave out)."""
        by_service: dict[str, list[Step]] = {}
        for s in steps:
            by_service.setdefault(s.service, []).append(s)
        if by_service and not self._started:
            self._started = True
            self.pool.start()
        with self._lock:
            for name, mine in by_service.items():
                self._work[name] = (tuple(mine), specs)
        for name in by_service:
            self.queue.add(name)
        return set(by_service)

    def _handle(self, name: str) -> float | None:
        with self._lock:
            work = self._work.pop(name, None)
        if work is not None:
            outcome = self._apply(name, *work)
            with self._lock:
                self._outcomes[name] = outcome
        if self.on_settled is not None:
            try:
                self.on_settled(name)
            except Exception:  # a wake-up that failed must not fail the work that was done
                log.exception("%s: settled, but waking the loop failed", name)
        return None

    def wait(self, names: set[str], timeout: float | None = None) -> bool:
        return self.queue.wait_idle(names, timeout)

    def take_outcomes(self) -> list[ServiceOutcome]:
        """Outcomes of work settled since the last call (a pass reports each once)."""
        with self._lock:
            out, self._outcomes = list(self._outcomes.values()), {}
        return out

    def stop(self, timeout: float) -> list[str]:
        """Stop taking work; wait up to `timeout` s for what runs. Returns the services still
        running then (their intents are journaled: the next start settles them)."""
        if not self._started:
            self.queue.shutdown()
            return []
        return self.pool.stop(timeout)
