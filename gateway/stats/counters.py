"""Request statistics: sliding-window request rates per service for the autoscaler, and Prometheus.

Each worker counts requests per service in one-second buckets (a 300-slot ring) and publishes
`<state>/gateway/stats-<pid>.json` about every second; the autoscaler sums the files of all
workers. Requests held at zero replicas are counted on arrival, so scaling from zero needs no
second request. Prometheus metrics live in the default registry (multiprocess mode when the
gateway runs several workers, see `server.py`).

The request path only bumps plain integers (`ServiceStats.end`): prometheus-client's inc/observe
take a lock each, and in multiprocess mode write to an mmap, several microseconds per request.
`flush()` moves the counts into the Prometheus metrics: whenever a worker's last request in flight
ends (so at light load every request is in the metrics as it ends, and a busy worker pays for a
flush only when it has a moment with nothing in flight), with every stats publication (about every
second) and before answering `/metrics`.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

WINDOWS = (6, 30, 60, 300)  # 6: the autoscaler's panic window
RING = 300

REQUESTS = Counter("tidegate_gateway_requests_total", "Requests answered", ["service", "code"])
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
LATENCY = Histogram("tidegate_gateway_request_duration_seconds", "Time to the end of the response", ["service"], buckets=BUCKETS)
UPSTREAM_ERRORS = Counter("tidegate_gateway_upstream_errors_total", "Failed upstream calls", ["service", "kind"])
IN_FLIGHT = Gauge("tidegate_gateway_in_flight", "Requests in flight", ["service"], multiprocess_mode="livesum")
HELD = Gauge("tidegate_gateway_held", "Requests held for a cold start", ["service"], multiprocess_mode="livesum")


class WindowCounter:
    """Counts per whole second over the last RING seconds (of the monotonic clock: wall-clock
    steps must not move requests in or out of a window)."""

    __slots__ = ("counts", "stamps")

    def __init__(self) -> None:
        self.counts = [0] * RING
        self.stamps = [-1] * RING

    def add(self, now: float) -> None:
        sec = int(now)
        i = sec % RING
        if self.stamps[i] != sec:
            self.stamps[i] = sec
            self.counts[i] = 0
        self.counts[i] += 1

    def rate(self, now: float, window: int) -> float:
        """Requests per second over the `window` seconds ending now (current second included)."""
        sec = int(now)
        first = sec - window + 1
        total = sum(c for c, s in zip(self.counts, self.stamps, strict=True) if first <= s <= sec)
        return total / window


class ServiceStats:
    __slots__ = (
        "_buckets", "_codes", "_counters", "_dirty", "_owner", "_sum", "held", "held_gauge", "in_flight",
        "in_flight_gauge", "latency", "name", "window",
    )

    def __init__(self, name: str, owner: Stats | None = None) -> None:
        self.name = name
        self._owner = owner
        self._dirty = False
        self.window = WindowCounter()
        self.in_flight = 0
        self.held = 0
        self.in_flight_gauge = IN_FLIGHT.labels(name)
        self.held_gauge = HELD.labels(name)
        self.latency = LATENCY.labels(name)
        self._counters: dict[int, Any] = {}
        # Not yet flushed to Prometheus: answers per status, latency per bucket (+Inf last), sum.
        self._codes: dict[int, int] = {}
        self._buckets = [0] * (len(BUCKETS) + 1)
        self._sum = 0.0

    def begin(self, now: float) -> None:
        self.window.add(now)
        self.in_flight += 1
        if self._owner is not None:
            self._owner.active += 1

    def end(self, status: int, seconds: float) -> None:
        self.in_flight -= 1
        codes = self._codes
        codes[status] = codes.get(status, 0) + 1
        # Prometheus' bucket: the first upper bound >= the value.
        self._buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
        self._sum += seconds
        owner = self._owner
        if owner is not None:
            if not self._dirty:
                self._dirty = True
                owner.dirty.append(self)
            owner.active -= 1
            if owner.active <= 0:
                owner.flush(everything=False)

    def flush(self) -> None:
        """Add the counts since the last flush to the Prometheus metrics; set the gauges."""
        self._dirty = False
        self.in_flight_gauge.set(self.in_flight)
        codes, self._codes = self._codes, {}
        for status, n in codes.items():
            counter = self._counters.get(status)
            if counter is None:
                counter = self._counters[status] = REQUESTS.labels(self.name, str(status))
            counter.inc(n)
        if not codes:
            return
        # Histogram.observe() one value at a time would cost what this saves; its per-bucket
        # values (not cumulative) and sum are prometheus-client's documented storage layout.
        child: Any = self.latency
        for i, n in enumerate(self._buckets):
            if n:
                child._buckets[i].inc(n)
                self._buckets[i] = 0
        child._sum.inc(self._sum)
        self._sum = 0.0


class Stats:
    def __init__(self) -> None:
        self.services: dict[str, ServiceStats] = {}
        self.active = 0  # requests in flight over all services
        self.dirty: list[ServiceStats] = []  # services with counts not yet flushed

    def service(self, name: str) -> ServiceStats:
        s = self.services.get(name)
        if s is None:
            s = self.services[name] = ServiceStats(name, self)
        return s

    def flush(self, everything: bool = True) -> None:
        """Flush the services with new counts (`everything`: refresh every service's gauges too)."""
        dirty, self.dirty = self.dirty, []
        for s in self.services.values() if everything else dirty:
            s.flush()

    def refused(self, service: str, status: int) -> None:
        """A request answered before it started (over a rate limit): counted by status, not as
        traffic (the autoscaler must not add replicas for requests it refused)."""
        REQUESTS.labels(service, str(status)).inc()

    def upstream_error(self, service: str, kind: str) -> None:
        UPSTREAM_ERRORS.labels(service, kind).inc()

    def snapshot(
        self, now: float, pid: int, per_upstream: Callable[[str], Mapping[str, int]], at: float | None = None,
        answered: Callable[[str], Mapping[str, float]] | None = None,
    ) -> dict[str, Any]:
        """`now` is the monotonic clock the windows count in; `at` the wall time written for readers;
        `answered`: per replica, the wall time of its last answer to a proxied request (liveness)."""
        return {
            "pid": pid,
            "at": now if at is None else at,
            "services": {
                name: {
                    **{f"rps_{w}": round(s.window.rate(now, w), 4) for w in WINDOWS},
                    "in_flight": s.in_flight,
                    "held": s.held,
                    "per_upstream_in_flight": dict(per_upstream(name)),
                    "per_upstream_answered_at": dict(answered(name)) if answered is not None else {},
                }
                for name, s in self.services.items()
            },
        }
