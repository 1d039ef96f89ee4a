"""Skipping settled services (reconciler.engine.settled) changes nothing a pass does.

Two engines run side by side on equal worlds (same salt, clock, backend, prober, stats): one with
the skip on, one with it off (`settled.enabled`). After a few no-op passes (the first engine then
skips every service), each input that can change while the revision stays the same is changed in
both worlds — a replica vanished, appeared or exited on the backend, a liveness probe failing, a
demand signal, timers coming due, stop/start, traffic, a new token or setting — and every
following pass must report the same plan, notes, wake-up times and writes, and leave the same
state document and routes.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeBackend, FakeProber

from backends.base import BackendRegistry, ReplicaStatus, TemporaryError
from reconciler.engine import settled
from reconciler.engine.autoscale import ServiceStats
from reconciler.engine.reconcile import Engine, EngineSettings, PassReport, Snapshot
from reconciler.state.records import ReplicaPhase
from tidegate.routes_io import read_snapshot

SERVICE = """\
type: service
name: {name}
python: "3.11"
env:
  - TOKEN
commands:
  - python -m http.server 8000
port: 8000
replicas: {replicas}
{scaling}"""
SCALED = "scaling:\n  metric: rps\n  target: 5\n  scale_down_delay: 10\n"


@contextmanager
def skipping(on: bool) -> Iterator[None]:
    saved = settled.enabled
    settled.enabled = on
    try:
        yield
    finally:
        settled.enabled = saved


class Clock:
    def __init__(self) -> None:
        self.t = 2_000_000.0

    def __call__(self) -> float:
        return self.t


class Side:
    """One world: its state dir, fake backend, prober, stats and engine."""

    def __init__(self, state: Path, skip: bool, env: dict[str, str], **settings: Any) -> None:
        self.state, self.skip = state, skip
        self.clock = Clock()
        self.backend = FakeBackend()
        self.prober = FakeProber()
        self.stats: dict[str, ServiceStats] = {}
        self.settings = EngineSettings(env=env, drain_min=2, drain_grace=30, **settings)
        self.engine = self.open()

    def open(self) -> Engine:
        with skipping(self.skip):
            return Engine(
                self.state,
                BackendRegistry({"local": self.backend}),
                self.settings,
                clock=self.clock,
                stats=lambda: self.stats,
                prober=self.prober,
            )

    def reopen(self, **settings: Any) -> None:
        self.engine.close()
        self.settings = EngineSettings(**{**self.settings.__dict__, **settings})
        self.engine = self.open()

    def reconcile(self, snap: Snapshot) -> PassReport:
        with skipping(self.skip):
            return self.engine.reconcile(snap)

    def state_json(self) -> dict[str, Any]:
        return self.engine.doc.model_dump(mode="json", exclude={"serial", "updated_at", "lineage"})

    def state_file(self) -> dict[str, Any]:
        saved = json.loads((self.state / "state.json").read_text())
        return {k: v for k, v in saved.items() if k not in ("serial", "updated_at", "lineage")}

    def routes(self) -> dict[str, Any]:
        return read_snapshot(self.state).model_dump(mode="json", exclude={"serial"})


class Twins:
    def __init__(self, tmp: Path, **settings: Any) -> None:
        self.tmp = tmp
        self.root = tmp / "repo"
        files = {
            "svc-a": SERVICE.format(name="svc-a", replicas=2, scaling=""),
            "svc-b": SERVICE.format(name="svc-b", replicas=1, scaling=""),
            "svc-c": SERVICE.format(name="svc-c", replicas=1, scaling=""),
            "svc-z": SERVICE.format(name="svc-z", replicas="0..2", scaling=SCALED),
        }
        for name, text in files.items():
            (self.root / name).mkdir(parents=True)
            (self.root / name / ".dstack.yml").write_text(text)
        self.snap = Snapshot("1" * 40, self.root)
        env = {"TOKEN": "t0k3n-one"}
        self.on = Side(tmp / "on", True, env, **settings)
        # The same installation (salt): equal spec hashes and replica ids on both sides.
        (tmp / "off").mkdir()
        shutil.copy(tmp / "on" / "installation.json", tmp / "off" / "installation.json")
        self.off = Side(tmp / "off", False, env, **settings)

    @property
    def sides(self) -> tuple[Side, Side]:
        return self.on, self.off

    def both(self, fn: Callable[[Side], object]) -> None:
        for side in self.sides:
            fn(side)

    def step(self, dt: float = 1.0) -> PassReport:
        """One pass on each side, compared; then the clocks move on by `dt`."""
        a, b = (side.reconcile(self.snap) for side in self.sides)
        assert _summary(a) == _summary(b)
        assert self.on.state_json() == self.off.state_json()
        assert self.on.state_file() == self.off.state_file() == self.on.state_json()  # written, not stale
        assert self.on.routes() == self.off.routes()
        self.both(lambda s: setattr(s.clock, "t", s.clock.t + dt))
        return a

    def settle(self) -> None:
        for _ in range(6):
            self.step()
        report = self.step()
        assert report.plan.empty and not report.wrote_state
        # The skip really is on: every fixed-count service is settled and the pass skipped them.
        assert set(self.on.engine._settled.entries) == {"svc-a", "svc-b", "svc-c"}
        assert not self.off.engine._settled.entries

    def close(self) -> None:
        self.both(lambda s: s.engine.close())


def _summary(r: PassReport) -> tuple[object, ...]:
    steps = [(s.action, s.service, s.replica, s.ordinal, s.replaces, s.reason) for s in r.plan.steps]
    return (r.revision, steps, dict(r.plan.changes), r.notes, r.wrote_state, r.wrote_routes, r.next_run_in, r.recheck_in)


@pytest.fixture(params=[0, 2], ids=["serial", "workers"])
def twins(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Twins]:
    # workers: each service's steps on the worker pool, the pass waiting for them (`apply`).
    t = Twins(tmp_path, workers=request.param)
    try:
        t.settle()
        yield t
    finally:
        t.close()


def _replica(side: Side, service: str, n: int = 0) -> str:
    return side.engine.doc.services[service].replicas[n].id


def _run(twins: Twins, passes: int = 12, dt: float = 1.0) -> None:
    for _ in range(passes):
        twins.step(dt)


def test_a_replica_gone_from_the_backend_is_restarted_alike(twins: Twins) -> None:
    twins.both(lambda s: s.backend.replicas.pop(_replica(s, "svc-b")))
    twins.step()
    assert twins.on.engine.doc.services["svc-b"].replicas[0].phase is ReplicaPhase.FAILED
    _run(twins, dt=3.0)
    assert "svc-b" in twins.on.engine._settled.entries  # restarted, ready, settled again


def test_a_replica_that_exited_or_appeared_is_handled_alike(twins: Twins) -> None:
    def exit_and_orphan(s: Side) -> None:
        rid = _replica(s, "svc-a", 1)
        s.backend.replicas[rid] = replace(s.backend.replicas[rid], status=ReplicaStatus.EXITED, message="oom")
        orphan = replace(s.backend.replicas[_replica(s, "svc-c")], replica_id=_replica(s, "svc-c").rsplit("-", 1)[0] + "-5")
        s.backend.replicas[orphan.replica_id] = orphan

    twins.both(exit_and_orphan)
    first = twins.step()
    assert {s.service for s in first.plan.steps} >= {"svc-c"}
    _run(twins, dt=3.0)


def test_a_failing_liveness_probe_and_its_recovery_are_seen_alike(twins: Twins) -> None:
    twins.both(lambda s: s.prober.unready.add(_replica(s, "svc-c")))
    _run(twins, passes=4, dt=11.0)  # re-probes come due: out of the routes, then failed
    events = [h.event for h in twins.on.engine.doc.services["svc-c"].history]
    assert "replica not answering" in events and "replica failed" in events
    twins.both(lambda s: s.prober.unready.clear())
    _run(twins, passes=8, dt=3.0)
    assert "svc-c" in twins.on.engine._settled.entries


def test_timers_coming_due_are_not_skipped(twins: Twins) -> None:
    # Liveness re-probes of settled services come due (recheck_interval 10 s) and pass.
    before = len(twins.on.prober.probed)
    _run(twins, passes=4, dt=6.0)
    assert len(twins.on.prober.probed) > before
    assert twins.on.prober.probed == twins.off.prober.probed


def test_a_demand_signal_and_traffic_are_acted_on_alike(twins: Twins) -> None:
    twins.both(lambda s: s.engine.note_demand("svc-z"))
    report = twins.step()
    assert any(s.service == "svc-z" for s in report.plan.steps)
    _run(twins, passes=4)

    def traffic(s: Side) -> None:
        s.stats["svc-a"] = ServiceStats(in_flight=3, per_upstream_in_flight={_replica(s, "svc-a"): 3})

    twins.both(traffic)
    _run(twins, passes=3)


def test_stop_and_start_are_acted_on_alike(twins: Twins) -> None:
    twins.both(lambda s: s.engine.stop_service("svc-b"))
    _run(twins, passes=6, dt=3.0)
    assert not twins.on.engine.doc.services["svc-b"].replicas
    twins.both(lambda s: s.engine.start_service("svc-b"))
    _run(twins, passes=6)


def test_a_new_token_or_setting_is_acted_on_alike(twins: Twins) -> None:
    twins.both(lambda s: s.reopen(env={"TOKEN": "t0k3n-two"}))
    report = twins.step()
    assert report.plan.changes  # the token is in the spec hash: every service rolls
    _run(twins, passes=10, dt=3.0)
    twins.both(lambda s: s.reopen(recheck_interval=3.0))
    _run(twins, passes=4, dt=2.0)


def test_a_backend_error_and_its_backoff_run_out_alike(twins: Twins) -> None:
    def break_b(s: Side) -> None:
        s.backend.create_errors["svc-b"] = TemporaryError("no capacity right now")
        s.backend.replicas.pop(_replica(s, "svc-b"))

    twins.both(break_b)
    _run(twins, passes=4, dt=2.0)
    assert twins.on.engine.doc.services["svc-b"].backoff_until is not None or any(
        r.phase is ReplicaPhase.FAILED for r in twins.on.engine.doc.services["svc-b"].replicas
    )
    twins.both(lambda s: s.backend.create_errors.clear())
    _run(twins, passes=12, dt=5.0)  # the backoff runs out: restarted, ready, settled again
    assert "svc-b" in twins.on.engine._settled.entries


def test_a_new_revision_moves_unchanged_services_alike_and_they_stay_settled(twins: Twins) -> None:
    root = twins.tmp / "repo-2"
    shutil.copytree(twins.root, root)
    (root / "svc-b" / ".dstack.yml").write_text(SERVICE.format(name="svc-b", replicas=2, scaling=""))
    kept = twins.on.engine._settled.entries["svc-a"].desired
    twins.snap = Snapshot("2" * 40, root)
    twins.step()
    # Their files did not change: the same desired objects, still settled, recorded at the revision.
    assert twins.on.engine._settled.entries["svc-a"].desired is kept
    assert {"svc-a", "svc-c"} <= set(twins.on.engine._settled.entries)
    _run(twins, passes=6, dt=3.0)
    assert len(twins.on.engine.doc.services["svc-b"].replicas) == 2
    twins.snap = Snapshot("3" * 40, root)  # a commit that changes no service file
    report = twins.step()
    assert report.plan.empty
    assert {n: r.revision for n, r in twins.on.engine.doc.services.items() if n != "svc-z"} == dict.fromkeys(
        ("svc-a", "svc-b", "svc-c"), "3" * 40
    )
