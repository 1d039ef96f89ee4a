"""The autoscaler: `desired_replicas(spec, stats, current, last_scaled_at, now)`, a pure function.

Why pure: scaling is a decision over numbers (requests per second seen by the gateway, a target,
delays since the last change) and must be table-tested with injected time. It follows dstack:
desired = ceil(rps / target) clamped to the replica range; scale up only after `scale_up_delay`
since the last scaling, except from zero (a request is waiting: go at once); scale down only
after `scale_down_delay`. The rps window (30/60/300 s, default 60) comes from the spec.
Every decision carries a human reason, recorded in state history and shown by `tidegate ps`.

Panic mode, as Knative's: the stable window reacts to a load step only once its average has
caught up (a 30 s window needs ~24 s of 2.5x load to ask for 3 replicas). Beside it, a short
`PANIC_WINDOW` (6 s) rate is watched; when it reaches `PANIC_THRESHOLD` (2x) the target per
current replica, the service panics: it scales up to what the short window asks at once (no
`scale_up_delay`), never scales down, and stays in panic until the short window has stayed
under the threshold for one stable window (`panic_since` carries that memory between passes).
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


PANIC_WINDOW = 6.0  # s: the short window the gateway publishes as `rps_6`
PANIC_THRESHOLD = 2.0  # panic when the short window's rps >= this x target x current replicas


@dataclass(frozen=True)
class ServiceStats:
    """One service's request statistics, summed over gateway workers."""

    rps_6: float = 0.0  # the panic window
    rps_30: float = 0.0
    rps_60: float = 0.0
    rps_300: float = 0.0
    in_flight: int = 0
    held: int = 0  # requests waiting for a replica (service at zero)
    per_upstream_in_flight: Mapping[str, int] = field(default_factory=dict)
    # Replica id -> wall time of its last answer to a proxied request (liveness counts it alive).
    per_upstream_answered_at: Mapping[str, float] = field(default_factory=dict)

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
            rps_6=self.rps_6 + other.rps_6,
            rps_30=self.rps_30 + other.rps_30,
            rps_60=self.rps_60 + other.rps_60,
            rps_300=self.rps_300 + other.rps_300,
            in_flight=self.in_flight + other.in_flight,
            held=self.held + other.held,
            per_upstream_in_flight=per,
            per_upstream_answered_at={
                k: max(self.per_upstream_answered_at.get(k, v), v)
                for k, v in {**self.per_upstream_answered_at, **other.per_upstream_answered_at}.items()
            },
        )


@dataclass(frozen=True)
class ScalingDecision:
    count: int
    reason: str
    wanted: int | None = None  # what the metric asks for, when a delay holds `count` back
    panic_since: float | None = None  # in panic mode: when the short window last crossed the threshold

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
    panic_since: float | None = None,
) -> ScalingDecision:
    """How many replicas the service should have now, and why. `panic_since`: the previous
    decision's (None: not in panic)."""
    dec = _stable(spec, stats, current, last_scaled_at, now, demand)
    return _panic(spec, stats or ServiceStats(), current, now, panic_since, dec)


def _panic(
    spec: ScalingPolicy, st: ServiceStats, current: int, now: float, since: float | None, dec: ScalingDecision
) -> ScalingDecision:
    """The stable decision `dec`, overridden while the short window panics."""
    if current < spec.min or current > spec.max or current == 0:
        return dec  # out of range, or at zero: the stable rules already go at once
    rps = st.rps_6
    over = rps >= PANIC_THRESHOLD * spec.target * current
    if over:
        since = now
    elif since is not None and now - since >= spec.window:
        since = None  # calm for a whole stable window: panic ends
    if since is None:
        return dec
    need = _clamp(math.ceil(rps / spec.target - 1e-9), spec)
    seen = f"rps {rps:.2f} over {PANIC_WINDOW:g}s"
    if need > current and need > dec.count:
        why = f">= {PANIC_THRESHOLD:g}x target {spec.target:g} x {current}" if over else "still in panic"
        return ScalingDecision(need, f"panic: scale up {current} -> {need}: {seen} {why}; scale_up_delay skipped", panic_since=since)
    if dec.count < current:
        return ScalingDecision(current, f"panic: hold at {current} (no scale-down in panic): {seen}", panic_since=since)
    return ScalingDecision(dec.count, f"{dec.reason} (panic: {seen})", dec.wanted, panic_since=since)


def _stable(
    spec: ScalingPolicy,
    stats: ServiceStats | None,
    current: int,
    last_scaled_at: float | None,
    now: float,
    demand: bool,
) -> ScalingDecision:
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
