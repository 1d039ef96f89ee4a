"""The work queue's promises under real threads: stingy, one worker per key, deferred re-adds,
delayed and rate-limited adds, a bounded pool that runs different keys in parallel."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from reconciler.engine.workqueue import ExponentialRateLimiter, WorkerPool, WorkQueue


def drain(q: WorkQueue) -> list[str]:
    out = []
    while (key := q.get(timeout=0.01)) is not None:
        out.append(key)
        q.done(key)
    return out


def test_keys_added_twice_before_a_get_are_processed_once_in_order() -> None:
    q = WorkQueue()
    for key in ("a", "b", "a", "c", "b"):
        q.add(key)
    assert len(q) == 3
    assert drain(q) == ["a", "b", "c"]


def test_a_re_add_while_processing_is_deferred_until_done() -> None:
    q = WorkQueue()
    q.add("a")
    assert q.get(timeout=0.01) == "a"
    q.add("a")  # a new revision arrives while the worker is busy with "a"
    q.add("a")
    assert q.busy("a")
    assert q.get(timeout=0.05) is None, "the same key must not reach a second worker"
    q.done("a")
    assert q.get(timeout=0.01) == "a", "the deferred add runs once the first worker is done"
    q.done("a")
    assert q.get(timeout=0.01) is None
    assert not q.busy("a")


@pytest.mark.parametrize(
    ("base", "cap", "expected"),
    [
        pytest.param(1.0, 300.0, [1.0, 2.0, 4.0, 8.0, 16.0], id="doubles"),
        pytest.param(0.5, 3.0, [0.5, 1.0, 2.0, 3.0, 3.0], id="capped"),
    ],
)
def test_rate_limiter_backs_off_per_key(base: float, cap: float, expected: list[float]) -> None:
    limiter = ExponentialRateLimiter(base, cap)
    assert [limiter.when("a") for _ in expected] == expected
    assert limiter.when("b") == base, "keys back off independently"
    assert limiter.requeues("a") == len(expected)
    limiter.forget("a")
    assert limiter.when("a") == base


def test_add_after_hands_the_key_out_only_once_due() -> None:
    q = WorkQueue()
    started = time.monotonic()
    q.add_after("a", 0.3)
    q.add_after("b", 0.0)  # no delay: queued at once
    assert q.get(timeout=0.01) == "b"
    assert q.get(timeout=0.05) is None
    assert q.get(timeout=5) == "a"
    assert time.monotonic() - started >= 0.3


def test_different_keys_run_in_parallel_and_one_key_never_twice() -> None:
    q = WorkQueue()
    active: Counter[str] = Counter()
    overlap: list[str] = []
    runs: Counter[str] = Counter()
    lock = threading.Lock()
    all_in = threading.Barrier(4, timeout=10)

    def handler(key: str) -> None:
        with lock:
            active[key] += 1
            runs[key] += 1
            if active[key] > 1:
                overlap.append(key)
        if runs[key] == 1:
            all_in.wait()  # four different keys must be inside the handler at the same time
            for _ in range(20):  # producers re-add while we are processing
                q.add(key)
                time.sleep(0.001)
        with lock:
            active[key] -= 1

    pool = WorkerPool(q, handler, size=4)
    pool.start()
    try:
        for key in "abcd":
            q.add(key)
        assert q.wait_idle(set("abcd"), timeout=20)
    finally:
        assert pool.stop(timeout=5) == []
    assert not overlap, f"a key ran on two workers at once: {overlap}"
    assert not all_in.broken
    # Each key: its first run, and exactly one more for all the adds that arrived meanwhile.
    assert runs == Counter({k: 2 for k in "abcd"})


def test_a_failing_key_is_retried_with_backoff_and_forgotten_on_success() -> None:
    q = WorkQueue(ExponentialRateLimiter(base=0.05, cap=1.0))
    calls: list[float] = []

    def handler(key: str) -> None:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise RuntimeError("backend said 503")

    pool = WorkerPool(q, handler, size=2)
    pool.start()
    try:
        q.add("svc")
        deadline = time.monotonic() + 10
        while len(calls) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert q.wait_idle({"svc"}, timeout=5)
    finally:
        pool.stop(timeout=5)
    assert len(calls) == 3
    assert calls[1] - calls[0] >= 0.05 and calls[2] - calls[1] >= 0.1, "the second retry waits twice as long"
    assert q.requeues("svc") == 0, "a success forgets the backoff"
    assert "svc" not in pool.errors


def test_a_handler_asks_for_a_requeue_after() -> None:
    q = WorkQueue()
    calls: list[str] = []

    def handler(key: str) -> float | None:
        calls.append(key)
        return 0.1 if len(calls) == 1 else None

    pool = WorkerPool(q, handler, size=1)
    pool.start()
    try:
        q.add("svc")
        deadline = time.monotonic() + 5
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        pool.stop(timeout=5)
    assert calls == ["svc", "svc"]


def test_stop_returns_while_a_key_hangs_and_names_it() -> None:
    q = WorkQueue()
    release = threading.Event()
    entered = threading.Event()

    def handler(key: str) -> None:
        entered.set()
        release.wait(30)

    pool = WorkerPool(q, handler, size=2)
    pool.start()
    q.add("stuck")
    assert entered.wait(5)
    started = time.monotonic()
    assert pool.stop(timeout=0.2) == ["stuck"]
    assert time.monotonic() - started < 5
    q.add("late")
    assert q.get(timeout=0.01) is None, "a stopped queue takes no more work"
    release.set()
