"""Request statistics: sliding-window request rates per service for the autoscaler, and Prometheus.

Each worker counts requests per service in one-second buckets (a 300-slot ring) and publishes
`<state>/gateway/stats-<pid>.json` about every second; the autoscaler sums the files of all
workers. Requests held at zero replicas are counted on arrival, so scaling from zero needs no
second request. Prometheus metrics live in the default registry (multiprocess mode when the
gateway runs several workers, see `server.py`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from gateway.signals import STATS_DIR

WINDOWS = (30, 60, 300)
RING = 300

REQUESTS = Counter("tidegate_gateway_requests_total", "Requests answered", ["service", "code"])
LATENCY = Histogram(
    "tidegate_gateway_request_duration_seconds",
    "Time to the end of the response",
    ["service"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
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
    __slots__ = ("_codes", "held", "held_gauge", "in_flight", "in_flight_gauge", "latency", "name", "window")

    def __init__(self, name: str) -> None:
        self.name = name
        self.window = WindowCounter()
        self.in_flight = 0
        self.held = 0
        self.in_flight_gauge = IN_FLIGHT.labels(name)
        self.held_gauge = HELD.labels(name)
        self.latency = LATENCY.labels(name)
        self._codes: dict[int, Any] = {}

    def begin(self, now: float) -> None:
        self.window.add(now)
        self.in_flight += 1
        self.in_flight_gauge.inc()

    def end(self, status: int, seconds: float) -> None:
        self.in_flight -= 1
        self.in_flight_gauge.dec()
        counter = self._codes.get(status)
        if counter is None:
            counter = self._codes[status] = REQUESTS.labels(self.name, str(status))
        counter.inc()
        self.latency.observe(seconds)


class Stats:
    def __init__(self) -> None:
        self.services: dict[str, ServiceStats] = {}

    def service(self, name: str) -> ServiceStats:
        s = self.services.get(name)
        if s is None:
            s = self.services[name] = ServiceStats(name)
        return s

    def upstream_error(self, service: str, kind: str) -> None:
        UPSTREAM_ERRORS.labels(service, kind).inc()

    def snapshot(
        self, now: float, pid: int, per_upstream: Callable[[str], Mapping[str, int]], at: float | None = None
    ) -> dict[str, Any]:
        """`now` is the monotonic clock the windows count in; `at` the wall time written for readers."""
        return {
            "pid": pid,
            "at": now if at is None else at,
            "services": {
                name: {
                    **{f"rps_{w}": round(s.window.rate(now, w), 4) for w in WINDOWS},
                    "in_flight": s.in_flight,
                    "held": s.held,
                    "per_upstream_in_flight": dict(per_upstream(name)),
                }
                for name, s in self.services.items()
            },
        }


def stats_path(state_dir: Path, pid: int) -> Path:
    return state_dir / STATS_DIR / f"stats-{pid}.json"


def write_stats(state_dir: Path, data: Mapping[str, Any]) -> None:
    path = stats_path(state_dir, int(data["pid"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)
