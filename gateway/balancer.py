"""Least-outstanding-requests choice over a service's replicas, with a cool-down for refusers.

`choose()` is the pure decision; `Balancer` holds the per-worker counters it decides from. The
counters are only touched by `acquire`/`release`, and callers release in `finally`, so a
cancelled or failed request never leaks an in-flight count.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from tidegate.routes import Upstream


def choose(
    upstreams: Sequence[Upstream],
    in_flight: Mapping[str, int],
    cooled_until: Mapping[str, float],
    now: float,
    exclude: Collection[str] = (),
    start: int = 0,
) -> Upstream | None:
    """The non-draining, not cooled, not excluded upstream with fewest in-flight requests.

    Ties go to the first one found from position `start` (a rotating offset spreads equal load).
    When every candidate is cooling down, the one whose cool-down ends first is tried anyway:
    refusing everything would turn a brief blip into an outage.
    """
    best: Upstream | None = None
    best_load = 0
    cooling: Upstream | None = None
    n = len(upstreams)
    for i in range(n):
        u = upstreams[(start + i) % n]
        if u.draining or u.replica_id in exclude:
            continue
        if cooled_until.get(u.replica_id, 0.0) > now:
            if cooling is None or cooled_until[u.replica_id] < cooled_until[cooling.replica_id]:
                cooling = u
            continue
        load = in_flight.get(u.replica_id, 0)
        if best is None or load < best_load:
            best, best_load = u, load
    return best if best is not None else cooling


def has_ready(upstreams: Sequence[Upstream]) -> bool:
    return any(not u.draining for u in upstreams)


class Balancer:
    """Per-worker in-flight counters and cool-downs, keyed by replica id."""

    def __init__(self, cooldown: float) -> None:
        self.cooldown = cooldown
        self.in_flight: dict[str, int] = {}
        self.cooled_until: dict[str, float] = {}
        # Replica id -> wall time of its last answer (response headers) to a proxied request: the
        # reconciler's liveness counts a replica answering real traffic as alive.
        self.answered_at: dict[str, float] = {}
        self._rr = 0

    def pick(self, upstreams: Sequence[Upstream], now: float, exclude: Collection[str] = ()) -> Upstream | None:
        self._rr += 1
        return choose(upstreams, self.in_flight, self.cooled_until, now, exclude, self._rr)

    def acquire(self, upstream: Upstream) -> None:
        self.in_flight[upstream.replica_id] = self.in_flight.get(upstream.replica_id, 0) + 1

    def release(self, upstream: Upstream) -> None:
        left = self.in_flight.get(upstream.replica_id, 0) - 1
        if left > 0:
            self.in_flight[upstream.replica_id] = left
        else:
            self.in_flight.pop(upstream.replica_id, None)

    def answered(self, upstream: Upstream, wall: float) -> None:
        self.answered_at[upstream.replica_id] = wall

    def cool(self, upstream: Upstream, now: float) -> None:
        self.cooled_until[upstream.replica_id] = now + self.cooldown

    def forget(self, live_ids: Collection[str]) -> None:
        """Drop cool-downs of replicas no longer routed (counters go when their requests end)."""
        for rid in [r for r in self.cooled_until if r not in live_ids]:
            del self.cooled_until[rid]
        for rid in [r for r in self.answered_at if r not in live_ids]:
            del self.answered_at[rid]
