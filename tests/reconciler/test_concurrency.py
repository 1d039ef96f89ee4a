"""The engine with workers: no service waits for another's backend call, and crash recovery holds
while work is in flight. Real threads, a real clock, the fake backend with cloud-like latencies."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fakes import FakeBackend

from backends.base import BackendRegistry
from reconciler.engine.autoscale import ServiceStats
from reconciler.engine.reconcile import Engine, EngineSettings, Snapshot
from reconciler.state.records import ReplicaPhase
from tidegate.routes_io import read_snapshot

SERVICE = """\
type: service
name: {name}
python: "3.11"
commands:
  - {cmd}
port: 8000
replicas: {replicas}
{extra}"""


def service(name: str, replicas: int | str = 1, cmd: str = "python -m http.server 8000", extra: str = "") -> str:
    return SERVICE.format(name=name, replicas=replicas, cmd=cmd, extra=extra)


ROLLED = "python -m http.server 8000 --bind 127.0.0.1"
AUTOSCALE = "scaling:\n  metric: rps\n  target: 10\n  scale_up_delay: 0\n  scale_down_delay: 600\n"


class Cluster:
    def __init__(self, tmp: Path, backend: FakeBackend, workers: int = 4) -> None:
        self.tmp = tmp
        self.state = tmp / "state"
        self.backend = backend
        self.workers = workers
        self.n = 0
        self.stats: dict[str, ServiceStats] = {}
        self.engine = self.open()

    def open(self) -> Engine:
        settings = EngineSettings(workers=self.workers, drain_min=0.1, drain_grace=0.5, backoff_base=0.2)
        registry = BackendRegistry({"local": self.backend})
        return Engine(self.state, registry, settings, prober=self.backend.prober(), stats=lambda: self.stats)

    def commit(self, files: dict[str, str]) -> Snapshot:
        self.n += 1
        root = self.tmp / "repo" / f"rev{self.n}"
        root.mkdir(parents=True)
        for name, text in files.items():
            (root / f"{name}.dstack.yml").write_text(text)
        return Snapshot(revision=f"{self.n:040x}", root=root)

    def drive(self, snap: Snapshot, until: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        """Run passes as `up` does (never waiting for workers) until `until()` holds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.engine.reconcile(snap, wait=False)
            if until():
                return
            time.sleep(0.05)
        pytest.fail(f"{what} did not happen within {timeout:g}s; busy: {sorted(self.engine.busy())}")

    def upstreams(self, name: str) -> list[str]:
        route = read_snapshot(self.state).services.get(name)
        return sorted(u.replica_id for u in route.upstreams if not u.draining) if route else []

    def ready(self, name: str) -> list[str]:
        with self.engine.lock:
            rec = self.engine.doc.services.get(name)
            return sorted(r.id for r in rec.replicas if r.phase is ReplicaPhase.READY) if rec else []


@pytest.fixture
def hung() -> Iterator[FakeBackend]:
    backend = FakeBackend(hangs={"alpha": 60.0})
    try:
        yield backend
    finally:
        backend.release()


def deploy_roll_scale(c: Cluster, hang_started: float, hang: float) -> None:
    """While alpha's create hangs: beta deploys, rolls to a new spec, scales to 3, and the
    autoscaler takes it to 4 on load."""
    v1 = c.commit({"alpha": service("alpha"), "beta": service("beta")})
    c.drive(v1, lambda: len(c.upstreams("beta")) == 1, "beta deployed")
    [first] = c.upstreams("beta")

    v2 = c.commit({"alpha": service("alpha"), "beta": service("beta", cmd=ROLLED)})
    c.drive(
        v2,
        lambda: len(c.upstreams("beta")) == 1 and first not in c.upstreams("beta") + c.backend.running("beta"),
        "beta rolled (new replica routed, the old one drained and removed)",
    )

    v3 = c.commit({"alpha": service("alpha"), "beta": service("beta", 3, cmd=ROLLED)})
    c.drive(v3, lambda: len(c.upstreams("beta")) == 3, "beta scaled to 3")

    v4 = c.commit({"alpha": service("alpha"), "beta": service("beta", "1..4", cmd=ROLLED, extra=AUTOSCALE)})
    c.stats["beta"] = ServiceStats(rps_30=35, rps_60=35, rps_300=35)  # 35 rps over a target of 10
    c.drive(v4, lambda: len(c.upstreams("beta")) == 4, "beta autoscaled to 4")
    with c.engine.lock:
        assert "rps" in c.engine.doc.services["beta"].scaling[-1].reason

    # All of it happened inside the hang: alpha's create is still in flight on its worker.
    assert time.monotonic() - hang_started < hang
    assert c.backend.in_flight.get("create") == 1 and "alpha" in c.engine.busy()
    assert c.upstreams("alpha") == [] and c.backend.running("alpha") == []


def test_a_hung_create_holds_no_other_service(tmp_path: Path, hung: FakeBackend) -> None:
    """The hang is 60 s; the other service's deploy, roll and scale finish long before it, then
    the hang is cut short so the test does not wait it out (the slow test below does)."""
    c = Cluster(tmp_path, hung)
    try:
        deploy_roll_scale(c, time.monotonic(), 60.0)
        hung.release()
        v3 = c.commit({"alpha": service("alpha"), "beta": service("beta", 3, cmd=ROLLED)})
        c.drive(v3, lambda: len(c.upstreams("alpha")) == 1, "alpha deployed once its create returned")
        assert len(hung.creates()) == len(set(hung.creates())), "nothing was created twice"
    finally:
        c.engine.close()


@pytest.mark.slow
def test_a_60s_hang_holds_no_other_service_and_then_settles(tmp_path: Path, hung: FakeBackend) -> None:
    c = Cluster(tmp_path, hung)
    started = time.monotonic()
    try:
        deploy_roll_scale(c, started, 60.0)
        v3 = c.commit({"alpha": service("alpha"), "beta": service("beta", 3, cmd=ROLLED)})
        c.drive(v3, lambda: len(c.upstreams("alpha")) == 1, "alpha deployed after its 60 s create", timeout=90)
        assert time.monotonic() - started >= 60.0
        assert len(c.upstreams("beta")) == 3
    finally:
        c.engine.close()


def test_apply_runs_services_at_once_and_waits_for_them(tmp_path: Path) -> None:
    backend = FakeBackend(create_latency=0.3, blocking=True)  # an SDK that waits on `.result()`
    c = Cluster(tmp_path, backend, workers=6)
    try:
        snap = c.commit({f"s{i}": service(f"s{i}") for i in range(6)})
        report = c.engine.reconcile(snap)  # wait=True: what `tidegate apply` does
        assert sorted(o.service for o in report.outcomes) == [f"s{i}" for i in range(6)]
        assert all(o.error is None for o in report.outcomes)
        assert len(backend.running()) == 6
        assert backend.max_in_flight == 6, "six blocking creates ran at the same time"
    finally:
        c.engine.close()


def test_crash_while_a_create_is_in_flight_settles_it_on_restart(tmp_path: Path, hung: FakeBackend) -> None:
    """kill -9 while alpha's create runs on a worker and beta's work already wrote the state: the
    state written then must not claim alpha's intent as reflected, so the restart settles it."""
    c = Cluster(tmp_path, hung)
    snap = c.commit({"alpha": service("alpha"), "beta": service("beta")})
    c.drive(snap, lambda: len(c.upstreams("beta")) == 1, "beta deployed")
    journal = [json.loads(line) for line in (c.state / "journal.jsonl").read_text().splitlines()]
    [alpha_intent] = [e for e in journal if e.get("kind") == "intent" and e["service"] == "alpha"]
    saved = json.loads((c.state / "state.json").read_text())
    assert saved["journal_seq"] < alpha_intent["seq"], "state written past an intent still in flight"
    at_kill = tmp_path / "at-kill"
    shutil.copytree(c.state, at_kill)  # the disk as a SIGKILL would leave it

    hung.release()  # the cloud finishes the create the dead process started
    c.engine.close()
    shutil.rmtree(c.state)
    shutil.copytree(at_kill, c.state)

    c.engine = c.open()
    done = c.engine.recover()
    assert any(line.startswith("alpha-") and "adopted" in line for line in done), done
    c.drive(snap, lambda: len(c.upstreams("alpha")) == 1 and len(c.upstreams("beta")) == 1, "converged after restart")
    try:
        assert len(hung.creates()) == len(set(hung.creates())), "nothing was started twice"
        with c.engine.lock:
            recorded = sorted(r.id for s in c.engine.doc.services.values() for r in s.replicas)
        assert recorded == hung.running(), "state and backend agree: nothing leaked, nothing forgotten"
    finally:
        c.engine.close()
