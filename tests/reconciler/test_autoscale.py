"""desired_replicas(): table tests with injected time, and the gateway stats reader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.engine.autoscale import ScalingPolicy, ServiceStats, desired_replicas
from reconciler.engine.stats import read_stats

POLICY = ScalingPolicy(min=1, max=4, target=10, scale_up_delay=300, scale_down_delay=600, window=60)
ZERO = ScalingPolicy(min=0, max=3, target=5, scale_up_delay=300, scale_down_delay=600, window=60)
NOW = 10_000.0


def rps(r60: float, held: int = 0, r30: float = 0.0) -> ServiceStats:
    return ServiceStats(rps_30=r30, rps_60=r60, held=held)


CASES = [
    pytest.param(POLICY, rps(0), 1, None, False, 1, "steady", id="idle-at-min"),
    pytest.param(POLICY, rps(25), 1, None, False, 3, "scale up 1 -> 3", id="ceil-rps-over-target"),
    pytest.param(POLICY, rps(20), 1, None, False, 2, "scale up", id="exact-multiple-no-extra"),
    pytest.param(POLICY, rps(1000), 1, None, False, 4, "scale up 1 -> 4", id="clamped-to-max"),
    pytest.param(
        POLICY, rps(25), 1, NOW - 100, False, 1, "waiting for scale_up_delay", id="up-waits-for-delay"
    ),
    pytest.param(POLICY, rps(25), 1, NOW - 300, False, 3, "scale up", id="up-after-delay"),
    pytest.param(
        POLICY, rps(5), 3, NOW - 599, False, 3, "waiting for scale_down_delay", id="down-waits-for-delay"
    ),
    pytest.param(POLICY, rps(5), 3, NOW - 600, False, 1, "scale down 3 -> 1", id="down-after-delay"),
    pytest.param(
        POLICY,
        rps(25),
        1,
        NOW - 300,
        False,
        3,
        "300s since last scaling >= scale_up_delay 300s",
        id="up-says-delay",
    ),
    pytest.param(
        POLICY,
        rps(5),
        3,
        NOW - 700,
        False,
        1,
        "700s since last scaling >= scale_down_delay 600s",
        id="down-says-delay",
    ),
    pytest.param(POLICY, rps(0), 0, NOW, False, 1, "outside the range", id="below-min-fixed-at-once"),
    pytest.param(POLICY, rps(0), 9, NOW, False, 4, "outside the range", id="above-max-fixed-at-once"),
    pytest.param(ZERO, rps(0), 1, NOW - 600, False, 0, "scale down 1 -> 0", id="scale-to-zero-after-delay"),
    pytest.param(ZERO, rps(0), 1, NOW - 10, False, 1, "waiting", id="no-zero-before-delay"),
    pytest.param(
        ZERO, rps(0, held=2), 0, NOW - 1, False, 1, "scale from zero: 2 request(s) waiting", id="held-wakes"
    ),
    pytest.param(ZERO, rps(0), 0, NOW - 1, True, 1, "scale from zero", id="demand-signal-wakes"),
    pytest.param(ZERO, rps(12), 0, NOW - 1, False, 3, "scale from zero", id="from-zero-ignores-up-delay"),
    pytest.param(ZERO, rps(12, held=1), 0, NOW, False, 3, "scale from zero", id="held-uses-rps-when-higher"),
    pytest.param(ZERO, rps(0), 0, None, False, 0, "steady at 0", id="zero-stays-zero-without-requests"),
    pytest.param(
        ScalingPolicy(min=1, max=4, target=10, window=30),
        rps(0, r30=35),
        1,
        None,
        False,
        4,
        "over 30s",
        id="window-30-uses-rps-30",
    ),
]


@pytest.mark.parametrize(("policy", "stats", "current", "last", "demand", "count", "reason"), CASES)
def test_desired_replicas(
    policy: ScalingPolicy,
    stats: ServiceStats,
    current: int,
    last: float | None,
    demand: bool,
    count: int,
    reason: str,
) -> None:
    d = desired_replicas(policy, stats, current, last, NOW, demand=demand)
    assert d.count == count
    assert reason in d.reason


def test_reason_names_rps_and_target() -> None:
    d = desired_replicas(POLICY, rps(25), 1, None, NOW)
    assert "rps 25.00" in d.reason and "target 10" in d.reason


def test_no_stats_means_no_traffic() -> None:
    assert desired_replicas(POLICY, None, 2, NOW - 601, NOW).count == 1


def _write(folder: Path, pid: int, at: float, services: dict[str, dict[str, object]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"stats-{pid}.json").write_text(json.dumps({"pid": pid, "at": at, "services": services}))


def test_read_stats_sums_workers_and_ignores_stale(tmp_path: Path) -> None:
    g = tmp_path / "gateway"
    _write(
        g,
        1,
        NOW - 1,
        {"web": {"rps_60": 2.0, "in_flight": 1, "held": 0, "per_upstream_in_flight": {"r0": 1},
                 "rps_6": 4.0, "per_upstream_answered_at": {"r0": NOW - 3, "r1": NOW - 1}}},
    )
    _write(
        g,
        2,
        NOW - 2,
        {"web": {"rps_60": 3.5, "in_flight": 2, "held": 1, "per_upstream_in_flight": {"r0": 2},
                 "rps_6": 1.0, "per_upstream_answered_at": {"r0": NOW - 2, "r1": "torn"}}},
    )
    _write(g, 3, NOW - 60, {"web": {"rps_60": 100.0}})  # a dead worker's leftovers
    (g / "stats-4.json").write_text("{torn")
    stats = read_stats(tmp_path, NOW, max_age=10)
    assert stats["web"].rps_60 == pytest.approx(5.5)
    assert stats["web"].in_flight == 3 and stats["web"].held == 1
    assert dict(stats["web"].per_upstream_in_flight) == {"r0": 3}
    assert stats["web"].rps_6 == pytest.approx(5.0)
    # The latest answer any worker saw (a non-number is skipped).
    assert dict(stats["web"].per_upstream_answered_at) == {"r0": NOW - 2, "r1": NOW - 1}


def test_read_stats_without_folder(tmp_path: Path) -> None:
    assert read_stats(tmp_path, NOW) == {}


@pytest.mark.parametrize(
    ("wanted", "pending"),
    [
        pytest.param(2, "want 2 (rps 1.50 over 30s); waiting for scale_down_delay 600s", id="deferred-shown"),
        pytest.param(None, None, id="nothing-deferred"),
    ],
)
def test_ps_view_lists_every_scaling_change_and_the_deferred_one(
    wanted: int | None, pending: str | None
) -> None:
    from reconciler.state.records import ScalingRecord, ServiceRecord, StateDoc
    from reconciler.state.view import status_views

    rec = ServiceRecord(name="web", spec_hash="h", desired_count=3, scaling_wanted=wanted)
    rec.record_scaling(ScalingRecord(at=1, previous=0, count=1, reason="steady at 1"))
    rec.record_scaling(ScalingRecord(at=2, previous=1, count=3, reason="scale up 1 -> 3: rps 2.50"))
    rec.note(3, "scaling deferred", "want 2 (rps 1.50 over 30s); waiting for scale_down_delay 600s")
    (view,) = status_views(StateDoc(services={"web": rec}))
    assert view.scaling_history == ("0 -> 1: steady at 1", "1 -> 3: scale up 1 -> 3: rps 2.50")
    assert view.last_scaling == view.scaling_history[-1]
    assert view.scaling_pending == pending


# --- panic mode: the 6 s window beside the stable one -----------------------------------------------

STEP = ScalingPolicy(min=1, max=10, target=2, scale_up_delay=300, scale_down_delay=600, window=30)


def short(r6: float, r30: float = 0.0) -> ServiceStats:
    return ServiceStats(rps_6=r6, rps_30=r30, rps_60=r30)


PANIC = [
    # (stats, current, last scaled, panic since) -> (count, panic since after, reason)
    pytest.param(short(5.0, 1.0), 1, NOW - 10, None, 3, NOW, "panic: scale up 1 -> 3", id="step-2.5x-panics-past-delay"),
    pytest.param(short(4.0, 1.0), 1, NOW - 10, None, 2, NOW, ">= 2x target 2 x 1", id="exactly-2x-panics"),
    pytest.param(short(3.9, 1.0), 1, NOW - 10, None, 1, None, "steady at 1", id="under-2x-stable-rules"),
    pytest.param(short(7.0, 4.0), 2, NOW - 10, None, 2, None, "steady at 2", id="2x-is-per-current-replica"),
    pytest.param(short(8.0, 1.0), 2, NOW - 10, None, 4, NOW, "panic: scale up 2 -> 4", id="2x-of-two-replicas-panics"),
    pytest.param(short(100.0), 1, NOW - 10, None, 10, NOW, "panic: scale up 1 -> 10", id="clamped-to-max"),
    pytest.param(short(5.0, 1.0), 2, NOW - 5, NOW - 5, 3, NOW - 5, "still in panic", id="in-panic-follows-the-short-window"),
    pytest.param(short(0.5), 3, NOW - 5, NOW - 10, 3, NOW - 10, "(panic: rps 0.50 over 6s)", id="in-panic-reason-says-so"),
    pytest.param(short(0.5), 3, NOW - 700, NOW - 29, 3, NOW - 29, "no scale-down in panic", id="panic-outlasts-scale-down-delay"),
    pytest.param(short(0.5), 3, NOW - 700, NOW - 30, 1, None, "scale down 3 -> 1", id="calm-for-a-stable-window-ends-panic"),
    pytest.param(short(5.0, 6.0), 1, NOW - 400, None, 3, NOW, "scale up 1 -> 3", id="stable-agrees-stable-reason-kept"),
    pytest.param(short(0.0), 1, None, None, 1, None, "steady at 1", id="idle-no-panic"),
]


@pytest.mark.parametrize(("stats", "current", "last", "since", "count", "after", "reason"), PANIC)
def test_panic_window(
    stats: ServiceStats, current: int, last: float | None, since: float | None, count: int, after: float | None, reason: str
) -> None:
    d = desired_replicas(STEP, stats, current, last, NOW, panic_since=since)
    assert (d.count, d.panic_since) == (count, after), d
    assert reason in d.reason, d.reason


def test_a_load_step_panics_within_seconds_and_the_stable_window_would_not() -> None:
    """5 rps from t=0 (2.5x target 2): the 6 s window crosses 2x after ~5 s, the 30 s one after ~24 s."""
    since: float | None = None
    count, first = 1, None
    for t in range(40):
        seen = min(t + 1, 6) * 5.0 / 6  # whole seconds of 5 rps in each window, as the gateway counts
        st = ServiceStats(rps_6=seen, rps_30=min(t + 1, 30) * 5.0 / 30)
        d = desired_replicas(STEP, st, count, NOW - 1000, NOW + t, panic_since=since)
        since = d.panic_since
        if d.count > count and first is None:
            first = t
            assert d.reason.startswith("panic: scale up 1 -> 3"), d.reason
        count = d.count
    assert first is not None and first < 8
    assert count == 3  # the short window's 5 rps asks for 3 while the panic lasts
