"""The loop: one job, no overlap, wake-ups (call, signal files, SIGHUP) and clean shutdown."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.engine.loop import Loop
from tidegate.signals import send_signal


class Recorder:
    """A pass function that records calls and can be held inside a pass."""

    def __init__(self, delay: float | None = None) -> None:
        self.calls = 0
        self.concurrent = 0
        self.max_concurrent = 0
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.delay = delay
        self._lock = threading.Lock()
        self._cond = threading.Condition()

    def __call__(self) -> float | None:
        with self._lock:
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)
        self.entered.set()
        self.gate.wait(10)
        with self._lock:
            self.concurrent -= 1
        with self._cond:
            self.calls += 1
            self._cond.notify_all()
        return self.delay

    def wait_calls(self, n: int, timeout: float = 10) -> int:
        with self._cond:
            self._cond.wait_for(lambda: self.calls >= n, timeout)
            return self.calls


@pytest.fixture
def make_loop(tmp_path: Path) -> Iterator[type[Loop]]:
    loops: list[Loop] = []

    class Tracked(Loop):
        def __init__(self, *a: object, **k: object) -> None:
            super().__init__(*a, **k)  # type: ignore[arg-type]
            loops.append(self)

    yield Tracked
    for loop in loops:
        loop.shutdown()


def test_first_pass_runs_at_start_then_waits_for_interval(make_loop: type[Loop]) -> None:
    rec = Recorder()
    loop = make_loop(rec, interval=3600)
    loop.start()
    assert rec.wait_calls(1) == 1
    assert rec.wait_calls(2, timeout=0.3) == 1  # the hour-long interval has not elapsed


def test_wake_runs_a_pass_now(make_loop: type[Loop]) -> None:
    rec = Recorder()
    loop = make_loop(rec, interval=3600)
    loop.start()
    rec.wait_calls(1)
    loop.wake("test")
    assert rec.wait_calls(2) == 2


def test_wake_during_a_pass_runs_exactly_one_more_and_never_overlaps(make_loop: type[Loop]) -> None:
    rec = Recorder()
    loop = make_loop(rec, interval=3600)
    rec.gate.clear()
    loop.start()
    assert rec.entered.wait(5)
    for _ in range(5):  # a burst collapses into one follow-up pass
        loop.wake("burst")
    rec.gate.set()
    assert rec.wait_calls(2) == 2
    assert rec.wait_calls(3, timeout=0.5) == 2
    assert rec.max_concurrent == 1


def test_pass_may_ask_for_a_quick_requeue(make_loop: type[Loop]) -> None:
    rec = Recorder(delay=0.2)
    loop = make_loop(rec, interval=3600)
    loop.start()
    assert rec.wait_calls(3) >= 3


def test_a_requeue_later_than_the_interval_never_delays_the_next_pass(make_loop: type[Loop]) -> None:
    """A pass asking for a re-probe in 10 s must not push back a 0.3 s interval (a regression once
    made `--interval 1` polling wait 10 s between fetches)."""
    rec = Recorder(delay=3600)
    loop = make_loop(rec, interval=0.3, jitter=0)
    loop.start()
    assert rec.wait_calls(3, timeout=5) >= 3


def test_a_failing_pass_does_not_stop_the_loop(make_loop: type[Loop]) -> None:
    calls: list[int] = []
    done = threading.Event()

    def boom() -> float | None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first pass fails")
        done.set()
        return None

    loop = make_loop(boom, interval=3600)
    loop.start()
    deadline = time.monotonic() + 5
    while loop.passes < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert loop.last_error == "RuntimeError: first pass fails"
    loop.wake()
    assert done.wait(5)


def test_signal_files_wake_the_loop_and_are_queued(make_loop: type[Loop], tmp_path: Path) -> None:
    rec = Recorder()
    loop = make_loop(rec, interval=3600, state_dir=tmp_path)
    loop.start()
    rec.wait_calls(1)
    send_signal(tmp_path, "stop", {"service": "chat"})
    assert rec.wait_calls(2) == 2
    kinds = [(s["kind"], s.get("service")) for s in loop.take_signals()]
    assert kinds == [("stop", "chat")]
    assert loop.take_signals() == []
    assert not list((tmp_path / "signals").glob("*.json"))


def test_sighup_wakes_and_sigterm_returns_from_run(make_loop: type[Loop]) -> None:
    rec = Recorder()
    loop = make_loop(rec, interval=3600)
    loop.start()
    rec.wait_calls(1)

    before = signal.getsignal(signal.SIGTERM)

    def send() -> None:
        while signal.getsignal(signal.SIGHUP) in (signal.SIG_DFL, signal.SIG_IGN, None):
            time.sleep(0.01)  # run() has not installed its handlers yet
        os.kill(os.getpid(), signal.SIGHUP)
        rec.wait_calls(2)
        os.kill(os.getpid(), signal.SIGTERM)

    t = threading.Thread(target=send)
    t.start()
    loop.run()  # returns on SIGTERM
    t.join()
    assert rec.calls >= 2
    assert signal.getsignal(signal.SIGTERM) == before


class FakeSource:
    def __init__(self) -> None:
        self.fetches = 0

    def current(self) -> object:
        from reconciler.source.checkout import Checkout

        self.fetches += 1
        return Checkout(f"rev-{self.fetches}", Path("/nonexistent"), None)

    def describe(self) -> str:
        return "fake"


class FakeEngine:
    def __init__(self) -> None:
        self.revisions: list[str] = []
        self.stopped: list[str] = []
        self.demand: list[str] = []

    def reconcile(self, snapshot: object, wait: bool = True) -> object:
        from types import SimpleNamespace

        self.revisions.append(snapshot.revision)  # type: ignore[attr-defined]
        return SimpleNamespace(next_run_in=0.5, wake_in=0.5)

    def stop_service(self, name: str) -> None:
        if name == "unknown":
            raise KeyError(name)
        self.stopped.append(name)

    def start_service(self, name: str) -> None:
        pass

    def note_demand(self, name: str) -> None:
        self.demand.append(name)


def test_pass_fetches_on_the_interval_or_when_woken_and_applies_signals() -> None:
    from reconciler.cli.runtime import Pass

    now = [0.0]
    queued: list[dict[str, object]] = []
    source, engine = FakeSource(), FakeEngine()
    p = Pass(engine, source, lambda: [queued.pop() for _ in list(queued)], fetch_every=30, clock=lambda: now[0])  # type: ignore[arg-type]

    assert p() == 0.5 and source.fetches == 1
    now[0] = 1.0
    p()  # a quick requeue for readiness: no fetch, same revision reconciled again
    assert source.fetches == 1 and engine.revisions == ["rev-1", "rev-1"]
    p.request_fetch("webhook")
    p()
    assert source.fetches == 2
    now[0] = 40.0
    queued += [{"kind": "stop", "service": "web"}, {"kind": "stop", "service": "unknown"}, {"kind": "demand", "service": "chat"}]
    p()
    assert source.fetches == 3 and engine.revisions[-1] == "rev-3"
    assert engine.stopped == ["web"] and engine.demand == ["chat"]


def test_pass_sweeps_cloud_orphans_on_its_interval_and_never_without_state(tmp_path: Path) -> None:
    """`tidegate up` runs the orphan sweep itself: an owned instance the state does not know is
    deleted once past the grace period; known replicas stay; no state.json means no sweep."""
    import json

    from backends.base import ReplicaInfo, ReplicaStatus
    from backends.cloud.orphans import OrphanSweeper
    from reconciler.cli.runtime import Pass

    class Cloud:
        name = "aws"

        def __init__(self) -> None:
            self.ids = {"known-1", "orphan-1"}
            self.deleted: list[str] = []

        def list_owned(self) -> list[ReplicaInfo]:
            return [
                ReplicaInfo(i, "aws", ReplicaStatus.RUNNING, tags={"tidegate:owner": "me"}) for i in sorted(self.ids)
            ]

        def delete(self, replica_id: str) -> None:
            self.deleted.append(replica_id)
            self.ids.discard(replica_id)

        def sweep_security_groups(self) -> list[str]:
            return []

    now = [0.0]
    cloud = Cloud()
    engine = FakeEngine()
    engine.state_dir = tmp_path  # type: ignore[attr-defined]
    sweeper = OrphanSweeper([cloud], "me", grace=60, clock=lambda: now[0])  # type: ignore[list-item]
    p = Pass(engine, FakeSource(), list, clock=lambda: now[0], sweeper=sweeper, sweep_every=100)  # type: ignore[arg-type]

    p()  # no state.json yet: nothing is an orphan
    assert cloud.deleted == []
    (tmp_path / "state.json").write_text(json.dumps({"services": {"web": {"replicas": [{"id": "known-1"}]}}}))
    now[0] = 100.0
    p()  # first seen now: within the grace period
    assert cloud.deleted == []
    now[0] = 150.0
    p()  # not due yet (sweep_every)
    now[0] = 200.0
    p()
    assert cloud.deleted == ["orphan-1"]


def test_no_wake_up_is_lost_as_a_pass_returns(make_loop: type[Loop]) -> None:
    """Workers wake the loop whenever a service's work settles, often in the instant a pass
    returns: every wake-up is followed by a pass that starts after it, never by none, and passes
    never overlap (APScheduler used to skip such a run: 'maximum number of running instances')."""
    starts: list[float] = []
    overlap = threading.Event()
    running = threading.Lock()

    def pass_fn() -> float | None:
        if not running.acquire(blocking=False):
            overlap.set()
            return None
        try:
            starts.append(time.monotonic())
            time.sleep(0.005)
        finally:
            running.release()
        return None

    loop = make_loop(pass_fn, 60.0, jitter=0)
    loop.start()
    for i in range(60):
        time.sleep(0.003 + (i % 7) * 0.002)  # land at every phase of a pass
        woke = time.monotonic()
        loop.wake(f"settled {i}", fetch=False)
        deadline = time.monotonic() + 5
        while not (starts and starts[-1] >= woke) and time.monotonic() < deadline:
            time.sleep(0.001)
        assert starts and starts[-1] >= woke, f"wake-up {i} was lost: no pass started after it"
    assert not overlap.is_set(), "two passes ran at once"
