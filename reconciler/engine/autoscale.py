"""The autoscaler: `desired_replicas(spec, stats, current, last_scaled_at, now)`, a pure function.

Why pure: scaling is a decision over numbers (requests per second seen by the gateway, a target,
delays since the last change) and must be table-tested with injected time. It follows dstack:
desired = ceil(rps / target) clamped to the replica range; scale up only after `scale_up_delay`
since the last scaling, except from zero (a request is waiting: go at once); scale down only
after `scale_down_delay`. The rps window (30/60/300 s, default 60) comes from the spec.
Every decision carries a human reason, recorded in state history and shown by `tidegate ps`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ScalingPolicy:
    min: int
    max: int
    target: float  # rps per replica
    scale_up_delay: float = 300.0
    scale_down_delay: float = 600.0
    window: float = 60.0


@dataclass(frozen=True)
class ServiceStats:
    """One service's request statistics, summed over gateway workers."""

    rps_30: float = 0.0
    rps_60: float = 0.0
    rps_300: float = 0.0
    in_flight: int = 0
    held: int = 0  # requests waiting for a replica (service at zero)
    per_upstream_in_flight: Mapping[str, int] = field(default_factory=dict)

    def rps(self, window: float) -> float:
        """The rate over the window closest to the one asked for."""
        options = {30.0: self.rps_30, 60.0: self.rps_60, 300.0: self.rps_300}
        best = min(options, key=lambda w: (abs(w - window), w))
        return options[best]

    def __add__(self, other: ServiceStats) -> ServiceStats:
        per = dict(self.per_upstream_in_flight)
        for k, v in other.per_upstream_in_flight.items():
            per[k] = per.get(k, 0) + v
        return ServiceStats(
            rps_30=self.rps_30 + other.rps_30,
            rps_60=self.rps_60 + other.rps_60,
            rps_300=self.rps_300 + other.rps_300,
            in_flight=self.in_flight + other.in_flight,
            held=self.held + other.held,
            per_upstream_in_flight=per,
        )


@dataclass(frozen=True)
class ScalingDecision:
    count: int
    reason: str
    wanted: int | None = None  # what the metric asks for, when a delay holds `count` back

    def changed(self, current: int) -> bool:
        return self.count != current


def _clamp(n: int, spec: ScalingPolicy) -> int:
    return max(spec.min, min(spec.max, n))


def _waited(since: float | None, name: str, delay: float) -> str:
    """Why a delay no longer holds a change back (part of the recorded reason)."""
    if since is None:
        return f"no earlier scaling, {name} {delay:g}s does not apply"
    return f"{since:.0f}s since last scaling >= {name} {delay:g}s"


def desired_replicas(
    spec: ScalingPolicy,
    stats: ServiceStats | None,
    current: int,
    last_scaled_at: float | None,
    now: float,
    demand: bool = False,
) -> ScalingDecision:
    """How many replicas the service should have now, and why."""
    st = stats or ServiceStats()
    rps = st.rps(spec.window)
    wanted = math.ceil(rps / spec.target - 1e-9) if rps > 0 else 0
    need = _clamp(wanted, spec)
    seen = f"rps {rps:.2f} over {spec.window:g}s, target {spec.target:g}/replica"

    if current < spec.min or current > spec.max:
        return ScalingDecision(_clamp(current, spec), f"{current} outside the range {spec.min}..{spec.max}")

    waiting = st.held > 0 or demand
    if current == 0 and waiting:
        n = max(need, 1)
        return ScalingDecision(n, f"scale from zero: {st.held or 1} request(s) waiting; {seen}")

    since = None if last_scaled_at is None else now - last_scaled_at
    if need > current:
        if current == 0:
            return ScalingDecision(need, f"scale from zero: {seen}")
        if since is None or since >= spec.scale_up_delay:
            return ScalingDecision(
                need,
                f"scale up {current} -> {need}: {seen}; {_waited(since, 'scale_up_delay', spec.scale_up_delay)}",
            )
        return ScalingDecision(
            current,
            f"want {need} ({seen}); waiting for scale_up_delay {spec.scale_up_delay:g}s ({since:.0f}s since last scaling)",
        )
    if need < current:
        if since is None or since >= spec.scale_down_delay:
            return ScalingDecision(
                need,
                f"scale down {current} -> {need}: {seen}; {_waited(since, 'scale_down_delay', spec.scale_down_delay)}",
            )
        return ScalingDecision(
            current,
            f"want {need} ({seen}); waiting for scale_down_delay {spec.scale_down_delay:g}s ({since:.0f}s since last scaling)",
            wanted=need,
        )
    return ScalingDecision(current, f"steady at {current}: {seen}")
