"""Liveness re-probes of READY replicas: unrouted on the first failure, restarted at the threshold.

Fake backend + fake prober with an injected clock for the rules; one test with the real local
backend and a server that stops answering (alive but hung) on a flag file.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from test_engine import World, web

from backends.base import BackendRegistry
from backends.local.backend import LocalBackend
from gateway.stats.counters import Stats as GatewayStats
from reconciler.engine.autoscale import ServiceStats
from reconciler.engine.liveness import MAX_TIMEOUT, live_timeout, recheck_in
from reconciler.engine.probe import ProbeResult
from reconciler.engine.reconcile import Engine, EngineSettings, Snapshot
from reconciler.state.records import ReplicaPhase, ServiceStatus, StateDoc
from reconciler.state.store import StateStore
from reconciler.state.view import status_views
from tidegate.routes_io import read_snapshot
from tidegate.stats_file import write_stats

INTERVAL = 10.0


@pytest.fixture
def live(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path, recheck_interval=INTERVAL, unhealthy_threshold=3)
    try:
        yield w
    finally:
        w.engine.close()


def deployed(w: World) -> tuple[Snapshot, str]:
    snap = w.repo.commit({"web.dstack.yml": web()})
    w.converge(snap)
    [rid] = w.backend.running("web")
    assert w.upstreams("web") == [rid]
    return snap, rid


def replica(w: World, rid: str) -> tuple[ReplicaPhase, int, str | None]:
    r = w.engine.doc.services["web"].replica(rid)
    assert r is not None
    return r.phase, r.probe_failures, r.last_error


@pytest.mark.parametrize(
    ("answers", "routed", "failed_at"),
    [
        pytest.param("F.", [False, True], None, id="one-failure-unroutes-a-pass-puts-it-back"),
        pytest.param("FF.", [False, False, True], None, id="two-failures-stay-below-the-threshold"),
        pytest.param("F.F.F.", [False, True] * 3, None, id="failures-not-in-a-row-do-not-add-up"),
        pytest.param("FFF", [False, False, False], 2, id="threshold-in-a-row-fails-it"),
    ],
)
def test_probe_outcomes_route_and_fail(
    live: World, answers: str, routed: list[bool], failed_at: int | None
) -> None:
    snap, rid = deployed(live)
    for i, answer in enumerate(answers):
        live.clock.t += INTERVAL
        (live.prober.unready.add if answer == "F" else live.prober.unready.discard)(rid)
        live.engine.reconcile(snap)
        assert (rid in live.upstreams("web")) is routed[i], f"after probe {i + 1} ({answer})"
        phase, failures, error = replica(live, rid)
        if failed_at is not None and i >= failed_at:
            assert phase is ReplicaPhase.FAILED and failures == 0
            assert error and "not answering: 3 probes failed in a row" in error
        else:
            assert phase is ReplicaPhase.READY
            assert failures == (len(answers[: i + 1]) - len(answers[: i + 1].rstrip("F")))
            assert (error is not None) == (answer == "F")
    assert live.backend.creates() == [rid], "nothing restarted before the threshold"


def test_unanswering_replica_is_restarted_with_backoff_and_reported(live: World) -> None:
    snap, rid = deployed(live)
    live.prober.unready.add(rid)
    live.clock.t += INTERVAL
    first = live.engine.reconcile(snap)
    assert first.wrote_state and first.wrote_routes and live.upstreams("web") == []
    rec = live.engine.doc.services["web"]
    assert rec.status is ServiceStatus.DEGRADED and "not answering" in rec.reason
    [view] = status_views(live.engine.doc)
    assert view.ready == 0 and view.replicas[0].probe_failures == 1 and view.replicas[0].phase == "ready"
    for _ in range(2):
        live.clock.t += INTERVAL
        live.engine.reconcile(snap)
    assert replica(live, rid)[0] is ReplicaPhase.FAILED
    events = [h.event for h in rec.history]
    assert events[-2:] == ["replica not answering", "replica failed"]
    # The existing restart path: backoff (2 s for the first attempt), then delete + create.
    live.prober.unready.clear()
    live.clock.t += 2.0
    report = live.engine.reconcile(snap)
    assert [s.action.value for s in report.plan.steps] == ["restart_replica"]
    assert "not answering" in report.plan.steps[0].reason
    assert live.backend.deletes() == [rid]
    live.converge(snap)
    [new] = live.backend.running("web")
    assert live.upstreams("web") == [new]
    assert live.engine.doc.services["web"].status is ServiceStatus.RUNNING
    saved = StateStore(live.state).load().services["web"]
    assert any(h.event == "replica restarted" and "not answering" in h.detail for h in saved.history)


def test_healthy_rechecks_probe_once_per_interval_and_write_nothing(live: World) -> None:
    snap, rid = deployed(live)
    live.prober.probed.clear()
    live.clock.t += INTERVAL / 2
    half = live.engine.reconcile(snap)
    assert live.prober.probed == [] and half.recheck_in == pytest.approx(INTERVAL / 2 - 1, abs=1.0)
    live.clock.t += INTERVAL
    report = live.engine.reconcile(snap)
    assert live.prober.probed == [rid]
    assert report.plan.empty and not report.wrote_state and not report.wrote_routes
    assert report.next_run_in is None, "`apply` does not wait on re-probes"
    assert report.wake_in == pytest.approx(INTERVAL), "the loop comes back for the next re-probe"
    live.engine.reconcile(snap)  # an immediate extra pass (a wake-up) probes nothing
    assert live.prober.probed == [rid]


def test_a_prober_that_raises_counts_as_a_failed_probe(live: World) -> None:
    snap, rid = deployed(live)

    def broken(address: str, model: object, timeout: float) -> ProbeResult:
        raise OSError("boom")

    live.engine._prober = broken
    live.clock.t += INTERVAL
    live.engine.reconcile(snap)
    assert live.upstreams("web") == [] and "OSError: boom" in (replica(live, rid)[2] or "")


def test_recheck_in_is_none_without_ready_replicas_and_a_restart_probes_the_due_ones(live: World) -> None:
    assert recheck_in(StateDoc(), 0.0, INTERVAL, {}) is None
    snap, rid = deployed(live)
    live.clock.t += INTERVAL
    live.reopen()  # a new process knows no probe times: ready longer than an interval ago is due
    live.prober.probed.clear()
    live.engine.reconcile(snap)
    assert live.prober.probed == [rid]


# --- a real process that stops answering ---------------------------------------------------------

HANG_SERVER = """\
import http.server, os, time
FLAG = os.environ["HANG_FLAG"]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        while os.path.exists(FLAG):
            time.sleep(0.2)  # alive, accepting connections, never answering
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", 8000), H).serve_forever()
"""

HANG_SERVICE = """\
type: service
name: hang
env:
  - HANG_FLAG
commands:
  - python3 server.py
port: 8000
"""


def test_a_hung_local_replica_is_unrouted_then_restarted(tmp_path: Path) -> None:
    state, repo = tmp_path / "state", tmp_path / "repo"
    repo.mkdir()
    (repo / "hang.dstack.yml").write_text(HANG_SERVICE)
    (repo / "server.py").write_text(HANG_SERVER)
    snap = Snapshot("1" * 40, repo)
    backend = LocalBackend(state / "replicas", owner=StateStore(state).installation().id, grace=1.0)
    clock = [time.time()]
    settings = EngineSettings(
        # Relative to the replica's work dir: the sandboxed replica sees nothing else of the host.
        env={"HANG_FLAG": "hang.flag"}, probe_timeout=0.5, recheck_interval=5.0, unhealthy_threshold=2
    )
    eng = Engine(state, BackendRegistry({"local": backend}), settings, clock=lambda: clock[0])
    try:
        end = time.monotonic() + 60
        while (
            not read_snapshot(state).services.get("hang", None)
            or not read_snapshot(state).services["hang"].upstreams
        ):
            assert time.monotonic() < end, eng.status()
            eng.reconcile(snap)
            time.sleep(0.2)
            clock[0] += 0.2
        [first] = [i.replica_id for i in backend.list_owned()]
        flag = state / "replicas" / first / "work" / "hang.flag"
        flag.write_text("hang")
        clock[0] += 5.0
        eng.reconcile(snap)
        assert read_snapshot(state).services["hang"].upstreams == (), "hung: out of the routes at once"
        assert [i.replica_id for i in backend.list_owned()] == [first], "still alive: not yet replaced"
        clock[0] += 5.0
        eng.reconcile(snap)
        rec = eng.doc.services["hang"]
        assert rec.replicas[0].phase is ReplicaPhase.FAILED and "not answering" in (
            rec.replicas[0].last_error or ""
        )
        flag.unlink(missing_ok=True)  # the restarted process answers (its fresh work dir has no flag)
        clock[0] += 3.0
        end = time.monotonic() + 60
        while not read_snapshot(state).services["hang"].upstreams:
            assert time.monotonic() < end, eng.status()
            eng.reconcile(snap)
            time.sleep(0.2)
            clock[0] += 0.2
        assert any(h.event == "replica restarted" for h in eng.doc.services["hang"].history)
        assert len(backend.list_owned()) == 1
    finally:
        flag.unlink(missing_ok=True)
        eng.close()
        for info in backend.list_owned():
            backend.delete(info.replica_id)


# --- load: a replica answering real traffic is alive, a stopped one is not ----------------------------


def test_a_replica_answering_proxied_requests_is_alive_though_its_probe_fails(live: World) -> None:
    snap, rid = deployed(live)
    live.prober.unready.add(rid)  # the probe fails (saturated: no answer within its deadline)...
    for _ in range(5):
        live.clock.t += INTERVAL
        # ...but the gateway had an answer from it a moment ago.
        live.stats = {"web": ServiceStats(per_upstream_answered_at={rid: live.clock.t - 1}, per_upstream_in_flight={rid: 9})}
        live.engine.reconcile(snap)
        assert replica(live, rid) == (ReplicaPhase.READY, 0, None)
        assert live.upstreams("web") == [rid]
    assert live.backend.creates() == [rid]
    # Traffic stops reaching it (the last answer ages past the interval): the probes count again.
    for _ in range(3):
        live.clock.t += INTERVAL
        live.engine.reconcile(snap)
    assert replica(live, rid)[0] is ReplicaPhase.FAILED


@pytest.mark.parametrize(
    ("in_flight", "timeout"),
    [
        pytest.param(0, 2.0, id="idle-base-timeout"),
        pytest.param(4, 4.0, id="busy-longer"),
        pytest.param(1000, MAX_TIMEOUT, id="capped"),
    ],
)
def test_the_liveness_deadline_scales_with_the_requests_in_flight(live: World, in_flight: int, timeout: float) -> None:
    snap, rid = deployed(live)
    seen: list[float] = []

    def prober(address: str, model: object, t: float) -> ProbeResult:
        seen.append(t)
        return ProbeResult(True, "ok")

    live.engine._live_prober = prober
    live.stats = {"web": ServiceStats(per_upstream_in_flight={rid: in_flight})}
    live.clock.t += INTERVAL
    live.engine.reconcile(snap)
    assert seen == [timeout]
    assert live_timeout(2.0, in_flight) == timeout


BUSY_SERVER = """\
import http.server, os, time
FLAG = os.environ["BUSY_FLAG"]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if os.path.exists(FLAG):
            time.sleep(1.5)  # saturated: every answer waits behind the work in progress
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", 8000), H).serve_forever()
"""

BUSY_SERVICE = """\
type: service
name: busy
env:
  - BUSY_FLAG
commands:
  - python3 server.py
port: 8000
"""


def _server_processes(backend: LocalBackend, rid: str) -> list[psutil.Process]:
    meta = json.loads((backend.root / rid / "replica.json").read_text())
    found = [
        p for p in psutil.Process(int(meta["pid"])).children(recursive=True)
        if any("server.py" in part for part in p.cmdline())
    ]
    assert found, "the replica's server process"
    return found


@pytest.mark.slow
def test_slow_under_load_is_kept_and_a_stopped_replica_is_restarted(tmp_path: Path) -> None:
    state, repo = tmp_path / "state", tmp_path / "repo"
    repo.mkdir()
    (repo / "busy.dstack.yml").write_text(BUSY_SERVICE)
    (repo / "server.py").write_text(BUSY_SERVER)
    snap = Snapshot("1" * 40, repo)
    backend = LocalBackend(state / "replicas", owner=StateStore(state).installation().id, grace=1.0)
    clock = [time.time()]
    settings = EngineSettings(
        env={"BUSY_FLAG": "busy.flag"}, probe_timeout=0.5, recheck_interval=5.0, unhealthy_threshold=2
    )
    eng = Engine(state, BackendRegistry({"local": backend}), settings, clock=lambda: clock[0])
    gateway = GatewayStats()  # the gateway's own counters, published as the gateway publishes them

    def publish(answered: dict[str, float], in_flight: dict[str, int]) -> None:
        gateway.service("busy")
        write_stats(state, gateway.snapshot(
            time.monotonic(), 4242, lambda _s: in_flight, at=clock[0], answered=lambda _s: answered
        ))

    stopped: list[psutil.Process] = []
    try:
        end = time.monotonic() + 60
        while not read_snapshot(state).services.get("busy") or not read_snapshot(state).services["busy"].upstreams:
            assert time.monotonic() < end, eng.status()
            eng.reconcile(snap)
            time.sleep(0.2)
            clock[0] += 0.2
        [rid] = [i.replica_id for i in backend.list_owned()]
        (state / "replicas" / rid / "work" / "busy.flag").write_text("busy")  # 1.5 s per answer from now
        # Answering proxied requests (seen by the gateway): alive, whatever a probe would say.
        for _ in range(3):
            clock[0] += 5.0
            publish({rid: clock[0] - 1.0}, {rid: 1})
            eng.reconcile(snap)
            assert eng.doc.services["busy"].replicas[0].probe_failures == 0
        # No recent answer, but 4 requests in flight: the probe's deadline (0.5 + 4 x 0.5 s) covers
        # the 1.5 s a saturated answer takes; with the old fixed 0.5 s it would fail.
        for _ in range(3):
            clock[0] += 5.0
            publish({}, {rid: 4})
            eng.reconcile(snap)
            r = eng.doc.services["busy"].replicas[0]
            assert (r.id, r.phase, r.probe_failures) == (rid, ReplicaPhase.READY, 0), r.last_error
        assert read_snapshot(state).services["busy"].upstreams
        # Truly dead: the server is stopped (SIGSTOP), nothing answers, the gateway sees nothing.
        before = json.loads((backend.root / rid / "replica.json").read_text())["pid"]
        stopped = _server_processes(backend, rid)
        for p in stopped:
            p.suspend()
        for _ in range(2):
            clock[0] += 5.0
            publish({}, {rid: 0})
            eng.reconcile(snap)
        r = eng.doc.services["busy"].replicas[0]
        assert r.phase is ReplicaPhase.FAILED and "not answering" in (r.last_error or ""), r
        for p in stopped:
            p.resume()
        stopped = []
        clock[0] += 3.0
        end = time.monotonic() + 60
        while eng.doc.services["busy"].replicas[0].phase is not ReplicaPhase.READY:
            assert time.monotonic() < end, eng.status()
            eng.reconcile(snap)
            time.sleep(0.2)
            clock[0] += 0.2
        assert any(h.event == "replica restarted" for h in eng.doc.services["busy"].history)
        assert json.loads((backend.root / rid / "replica.json").read_text())["pid"] != before, "a new process"
        assert read_snapshot(state).services["busy"].upstreams
    finally:
        for p in stopped:
            with contextlib.suppress(psutil.Error):
                p.resume()
        eng.close()
        for info in backend.list_owned():
            backend.delete(info.replica_id)
