"""The engine end to end on a recording fake backend: passes, reliability rules, recovery."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from fakes import FakeBackend, FakeProber

from backends.base import BackendRegistry, PermanentError, ReplicaStatus, TemporaryError
from reconciler.engine import apply as apply_mod
from reconciler.engine.autoscale import ServiceStats
from reconciler.engine.naming import parse_replica_id
from reconciler.engine.plan import Action
from reconciler.engine.reconcile import Engine, EngineSettings, Snapshot
from reconciler.state import doc_copy
from reconciler.state.journal import Journal, Op
from reconciler.state.records import ReplicaPhase, ServiceStatus, versions
from reconciler.state.store import StateStore
from tidegate.routes_io import read_snapshot

SECRET = "s3cr3t-value-0f-the-token"

WEB = """\
type: service
name: web
python: "3.11"
env:
  - SECRET_TOKEN
  - MODE=prod
commands:
  - {cmd}
port: 8000
"""
API = """\
type: service
name: api
python: "3.11"
commands:
  - python -m http.server 8000
port: 8000
replicas: {replicas}
{scaling}
"""


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


class Repo:
    """Config revisions as snapshot directories (what the source hands the engine)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.n = 0

    def commit(self, files: dict[str, str]) -> Snapshot:
        self.n += 1
        root = self.base / f"rev{self.n}"
        root.mkdir(parents=True)
        for name, text in files.items():
            (root / name).write_text(text)
        return Snapshot(revision=f"{self.n:040x}", root=root)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    try:
        yield w
    finally:
        w.engine.close()


class World:
    def __init__(self, tmp: Path, **settings: object) -> None:
        self.tmp = tmp
        self.state = tmp / "state"
        self.clock = Clock()
        self.backend = FakeBackend()
        self.prober = FakeProber()
        self.stats: dict[str, ServiceStats] = {}
        self.repo = Repo(tmp / "repo")
        self.settings = EngineSettings(env={"SECRET_TOKEN": SECRET}, drain_min=2, drain_grace=30, **settings)  # type: ignore[arg-type]
        self.engine = self.open()

    def open(self) -> Engine:
        return Engine(
            self.state,
            BackendRegistry({"local": self.backend}),
            self.settings,
            clock=self.clock,
            stats=lambda: self.stats,
            prober=self.prober,
        )

    def reopen(self, **settings: object) -> None:
        self.engine.close()
        if settings:
            self.settings = EngineSettings(**{**self.settings.__dict__, **settings})  # type: ignore[arg-type]
        self.engine = self.open()

    def converge(self, snap: Snapshot | None, passes: int = 12, step: float = 1.0) -> None:
        for _ in range(passes):
            report = self.engine.reconcile(snap)
            self.clock.t += step
            if report.plan.empty and not any(
                r.phase in (ReplicaPhase.PROVISIONING, ReplicaPhase.DRAINING, ReplicaPhase.FAILED)
                for s in self.engine.doc.services.values()
                for r in s.replicas
            ):
                return

    def upstreams(self, name: str) -> list[str]:
        snap = read_snapshot(self.state)
        route = snap.services.get(name)
        return [u.replica_id for u in route.upstreams if not u.draining] if route else []


def web(cmd: str = "python -m http.server 8000") -> str:
    return WEB.format(cmd=cmd)


def api(replicas: str = "1", scaling: str = "") -> str:
    return API.format(replicas=replicas, scaling=scaling)


def test_create_then_ready_then_routed_and_idle_passes_do_nothing(world: World) -> None:
    snap = world.repo.commit({"web.dstack.yml": web(), "api.dstack.yml": api("2")})
    first = world.engine.reconcile(snap)
    assert sorted(s.action.value for s in first.plan.steps).count("add_replica") == 3
    assert world.upstreams("web") == []  # not probed yet: not routed
    world.clock.t += 1
    world.engine.reconcile(snap)
    assert len(world.upstreams("api")) == 2 and len(world.upstreams("web")) == 1
    route = read_snapshot(world.state).services["web"]
    assert route.host == "web.localhost" and route.auth is True
    calls = len(world.backend.calls)
    idle = world.engine.reconcile(snap)
    assert idle.plan.empty and not idle.wrote_state and not idle.wrote_routes
    assert [op for op, _ in world.backend.calls[calls:]] == ["list_owned"], "an idle pass only looks"
    assert world.engine.doc.services["web"].status is ServiceStatus.RUNNING


def test_secret_values_never_reach_the_state_dir(world: World) -> None:
    snap = world.repo.commit({"web.dstack.yml": web()})
    world.converge(snap)
    rid = world.backend.running("web")[0]
    assert world.backend.specs[rid].env["SECRET_TOKEN"] == SECRET  # the replica gets it ...
    for path in world.state.rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), (
                f"secret leaked into {path}"
            )  # ... nothing else
    assert world.engine.doc.services["web"].env_names == ["MODE", "SECRET_TOKEN"]


def test_secret_change_rolls_the_replicas(world: World) -> None:
    snap = world.repo.commit({"web.dstack.yml": web()})
    world.converge(snap)
    before = world.backend.running("web")
    world.reopen(env={"SECRET_TOKEN": "rotated"})
    world.converge(snap)
    after = world.backend.running("web")
    assert before != after and len(after) == 1


def test_rolling_update_keeps_serving_until_new_is_ready(world: World) -> None:
    snap = world.repo.commit({"web.dstack.yml": web()})
    world.converge(snap)
    [old] = world.backend.running("web")
    snap2 = world.repo.commit({"web.dstack.yml": web("python -m http.server 8000 --bind 0.0.0.0")})
    report = world.engine.reconcile(snap2)
    [step] = report.plan.steps
    assert step.action.value == "replace_replica" and step.replaces == old
    assert [c.field for c in report.plan.changes["web"]] == ["commands"]
    [new] = [r for r in world.backend.running("web") if r != old]
    world.prober.unready.add(new)
    world.clock.t += 1
    world.engine.reconcile(snap2)
    assert world.upstreams("web") == [old], "old serves while the new one is not ready"
    world.prober.unready.clear()
    world.clock.t += 1
    world.engine.reconcile(snap2)  # new ready -> old drained
    snapshot = read_snapshot(world.state).services["web"]
    assert {(u.replica_id, u.draining) for u in snapshot.upstreams} == {(old, True), (new, False)}
    world.clock.t += 3
    world.engine.reconcile(snap2)
    assert world.backend.running("web") == [new] and world.upstreams("web") == [new]


def test_bad_config_keeps_the_running_service(world: World) -> None:
    snap = world.repo.commit({"web.dstack.yml": web(), "api.dstack.yml": api()})
    world.converge(snap)
    running = world.backend.running()
    broken = world.repo.commit({"web.dstack.yml": web() + "bogus_key: 1\n", "api.dstack.yml": api("2")})
    world.converge(broken)
    assert set(running) <= set(world.backend.running())
    assert len(world.backend.running("api")) == 2, "the other service goes on"
    rec = world.engine.doc.services["web"]
    assert rec.status is ServiceStatus.KEPT and "web.dstack.yml has errors" in rec.reason
    assert world.upstreams("web"), "still routed"
    assert world.engine.plan(broken).exit_code == 1


def test_bad_config_still_restarts_a_crashed_replica_at_the_last_good_spec(world: World) -> None:
    snap = world.repo.commit({"web.dstack.yml": web(), "api.dstack.yml": api("2")})
    world.converge(snap)
    spec_hash = world.engine.doc.services["web"].spec_hash
    broken = world.repo.commit({"web.dstack.yml": "type: service\nname: web\ncommands: [oops\n"})
    world.converge(broken)
    [rid] = world.backend.running("web")
    world.backend.crash(rid)
    world.engine.reconcile(broken)
    r = world.engine.doc.services["web"].replica(rid)
    assert r is not None and r.phase is ReplicaPhase.FAILED and r.next_attempt_at is not None
    creates = len(world.backend.creates())
    world.engine.reconcile(broken)
    assert len(world.backend.creates()) == creates, "not restarted before its backoff"
    world.clock.t = r.next_attempt_at
    report = world.engine.reconcile(broken)
    assert [s.action.value for s in report.plan.steps] == ["restart_replica"]
    assert not report.plan.changes, "no spec change from the broken file"
    world.clock.t += 1
    world.engine.reconcile(broken)
    assert world.backend.running("web") == [rid] and world.backend.specs[rid].spec_hash == spec_hash
    # restarted from the files of the revision it last ran, not the broken one's
    assert (world.backend.specs[rid].workdir, world.backend.specs[rid].revision) == (
        str(Path(snap.root).absolute()), snap.revision,
    )  # fmt: skip
    assert world.upstreams("web") == [rid], "the route serves the restarted replica"
    rec = world.engine.doc.services["web"]
    assert rec.spec_hash == spec_hash and rec.desired_count == 1 and len(rec.replicas) == 1
    [row] = [v for v in world.engine.status() if v.name == "web"]
    assert row.status == "kept" and "web.dstack.yml has errors" in row.reason
    assert world.engine.plan(broken).exit_code == 1
    # Fixed: a normal reconcile resumes (here a new command rolls the replica).
    fixed = world.repo.commit(
        {"web.dstack.yml": web("python -m http.server 8001"), "api.dstack.yml": api("2")}
    )
    world.converge(fixed, step=5)
    rec = world.engine.doc.services["web"]
    assert rec.spec_hash != spec_hash and rec.status is ServiceStatus.RUNNING
    [new] = world.backend.running("web")
    assert world.backend.specs[new].spec_hash == rec.spec_hash and world.upstreams("web") == [new]


@pytest.mark.parametrize(
    "restart_after_broken, healed",
    [
        pytest.param(False, True, id="rebuilt-from-the-last-snapshot-after-a-restart"),
        pytest.param(True, False, id="revision-folder-unknown-left-as-it-is"),
    ],
)
def test_bad_config_healing_after_an_engine_restart(
    world: World, restart_after_broken: bool, healed: bool
) -> None:
    snap = world.repo.commit({"web.dstack.yml": web()})
    world.converge(snap)
    broken = world.repo.commit({"web.dstack.yml": web() + "bogus_key: 1\n"})
    if restart_after_broken:
        world.converge(broken)  # the state now points at the broken revision's folder only
    world.reopen()
    world.engine.recover()
    [rid] = world.backend.running("web")
    world.backend.crash(rid)
    world.engine.reconcile(broken)
    world.clock.t += 3
    report = world.engine.reconcile(broken)
    assert [s.action.value for s in report.plan.steps] == (["restart_replica"] if healed else [])
    if healed:
        world.clock.t += 1
        world.engine.reconcile(broken)
        [again] = world.backend.running("web")
        assert world.backend.specs[again].workdir == str(Path(snap.root).absolute()), "the rebuilt revision's files"
    rec = world.engine.doc.services["web"]
    assert rec.status is ServiceStatus.KEPT and "web.dstack.yml has errors" in rec.reason


def test_removing_a_file_deletes_only_that_service(world: World) -> None:
    snap = world.repo.commit({"web.dstack.yml": web(), "api.dstack.yml": api()})
    world.converge(snap)
    world.converge(world.repo.commit({"api.dstack.yml": api()}))
    assert world.backend.running("web") == [] and len(world.backend.running("api")) == 1
    assert "web" not in world.engine.doc.services and "web" not in read_snapshot(world.state).services


def test_empty_commit_prunes_nothing_unless_allowed(world: World) -> None:
    snap = world.repo.commit({"web.dstack.yml": web()})
    world.converge(snap)
    empty = world.repo.commit({"README.md": "nothing here"})
    report = world.engine.reconcile(empty)
    assert report.plan.empty and any("no services" in n for n in report.notes)
    assert len(world.backend.running("web")) == 1
    world.reopen(allow_empty=True)
    world.converge(empty)
    assert world.backend.running() == []


def test_missing_bare_env_blocks_only_that_service(world: World) -> None:
    world.reopen(env={})
    snap = world.repo.commit({"web.dstack.yml": web(), "api.dstack.yml": api()})
    world.converge(snap)
    assert world.backend.running("web") == [] and len(world.backend.running("api")) == 1
    [row] = [v for v in world.engine.status() if v.name == "web"]
    assert row.status == "blocked" and "SECRET_TOKEN" in row.reason and "--env-file" in row.reason
    result = world.engine.plan(snap)
    assert result.exit_code == 1 and "web" in result.desired.blocked  # type: ignore[union-attr]


def test_failed_replica_restarts_with_exponential_backoff(world: World) -> None:
    snap = world.repo.commit({"web.dstack.yml": web()})
    world.converge(snap)
    [rid] = world.backend.running("web")
    delays = []
    for _ in range(3):
        world.backend.crash(rid)
        world.engine.reconcile(snap)
        r = world.engine.doc.services["web"].replica(rid)
        assert r is not None and r.phase is ReplicaPhase.FAILED and r.next_attempt_at is not None
        delays.append(r.next_attempt_at - world.clock.t)
        creates = len(world.backend.creates())
        world.engine.reconcile(snap)
        assert len(world.backend.creates()) == creates, "not restarted before its backoff"
        world.clock.t = r.next_attempt_at
        world.engine.reconcile(snap)
        assert len(world.backend.creates()) == creates + 1
        world.prober.unready.add(rid)  # it keeps failing to come up healthy, then crashes again
        world.clock.t += 1
    assert delays == [2.0, 4.0, 8.0]
    rows = world.engine.status()
    assert rows[0].replicas[0].attempts == 3


def test_fixed_count_replaces_a_dead_replica(world: World) -> None:
    snap = world.repo.commit({"api.dstack.yml": api("3")})
    world.converge(snap)
    victim = world.backend.running("api")[1]
    world.backend.replicas.pop(victim)  # vanished (machine gone)
    world.converge(snap, step=5)
    assert len(world.backend.running("api")) == 3


def test_permanent_error_stalls_one_service_temporary_backs_off(world: World) -> None:
    world.backend.create_errors["web"] = PermanentError("python 3.11 is not installed")
    world.backend.create_errors["api"] = TemporaryError("busy")
    snap = world.repo.commit({"web.dstack.yml": web(), "api.dstack.yml": api()})
    report = world.engine.reconcile(snap)
    assert {o.service: o.permanent for o in report.outcomes if o.error} == {"web": True, "api": False}
    world.clock.t += 1
    creates = len(world.backend.creates())
    world.engine.reconcile(snap)
    assert len(world.backend.creates()) == creates, "stalled and backing-off services wait"
    assert world.engine.doc.services["web"].status is ServiceStatus.STALLED
    del world.backend.create_errors["api"]
    world.clock.t += 10
    world.converge(snap)
    assert len(world.backend.running("api")) == 1 and world.backend.running("web") == []
    del world.backend.create_errors["web"]
    world.converge(world.repo.commit({"web.dstack.yml": web("echo fixed"), "api.dstack.yml": api()}))
    assert len(world.backend.running("web")) == 1, "a new spec un-stalls it"


def test_autoscale_up_and_down_with_recorded_reasons(world: World) -> None:
    scaling = "scaling:\n  metric: rps\n  target: 10\n  scale_up_delay: 5\n  scale_down_delay: 20\n"
    snap = world.repo.commit({"api.dstack.yml": api("1..3", scaling)})
    world.converge(snap)
    assert len(world.backend.running("api")) == 1
    world.stats["api"] = ServiceStats(rps_60=25)
    world.clock.t += 10
    world.converge(snap)
    assert len(world.backend.running("api")) == 3
    rec = world.engine.doc.services["api"]
    assert rec.scaling[-1].count == 3 and "rps 25.00" in rec.scaling[-1].reason
    world.stats["api"] = ServiceStats(rps_60=0)
    world.engine.reconcile(snap)
    assert world.engine.doc.services["api"].desired_count == 3, "down waits for scale_down_delay"
    world.clock.t += 1
    world.engine.reconcile(snap)
    deferred = [h for h in world.engine.doc.services["api"].history if h.event == "scaling deferred"]
    assert len(deferred) == 1 and "waiting for scale_down_delay 20s" in deferred[0].detail
    world.clock.t += 21
    world.converge(snap, step=3)
    assert len(world.backend.running("api")) == 1
    assert "scale down 3 -> 1" in (world.engine.status()[0].last_scaling or "")


def test_panic_mode_scales_a_load_step_at_once_and_records_why(world: World) -> None:
    scaling = "scaling:\n  metric: rps\n  target: 2\n  scale_up_delay: 5m\n  scale_down_delay: 10m\n  window: 30\n"
    snap = world.repo.commit({"api.dstack.yml": api("1..4", scaling)})
    world.converge(snap)
    world.clock.t += 10
    # A step: the 6 s window sees 5 rps (2.5 x target), the 30 s one has not caught up yet.
    world.stats["api"] = ServiceStats(rps_6=5.0, rps_30=1.0)
    world.converge(snap)
    rec = world.engine.doc.services["api"]
    assert len(world.backend.running("api")) == 3 and rec.panic_since is not None
    assert rec.scaling[-1].reason.startswith("panic: scale up 1 -> 3"), rec.scaling[-1].reason
    assert [h.event for h in rec.history if h.event.startswith("panic")] == ["panic mode entered"]
    # Load gone: no scale-down while in panic; after a calm stable window (30 s) panic ends, and
    # scale_down_delay (10 m since the panic scale-up) still holds the count then.
    world.stats["api"] = ServiceStats()
    assert rec.panic_since is not None
    world.clock.t = rec.panic_since + 29  # the short window last crossed the threshold then
    world.engine.reconcile(snap)
    assert rec.desired_count == 3 and rec.panic_since is not None
    world.clock.t += 1
    world.engine.reconcile(snap)
    assert rec.desired_count == 3 and rec.panic_since is None
    assert [h.event for h in rec.history if h.event.startswith("panic")] == ["panic mode entered", "panic mode ended"]
    assert StateStore(world.state).load().services["api"].panic_since is None


def test_scale_to_zero_and_wake_on_demand(world: World) -> None:
    scaling = "scaling:\n  metric: rps\n  target: 5\n  scale_down_delay: 10\n"
    snap = world.repo.commit({"api.dstack.yml": api("0..2", scaling)})
    world.converge(snap)
    assert world.backend.running("api") == [] and "api" in read_snapshot(world.state).services
    world.engine.note_demand("api")
    world.converge(snap)
    assert len(world.backend.running("api")) == 1 and world.upstreams("api")
    world.clock.t += 11
    world.converge(snap, step=3)
    assert world.backend.running("api") == []
    assert read_snapshot(world.state).services["api"].min_replicas == 0


def test_stop_holds_until_start(world: World) -> None:
    snap = world.repo.commit({"api.dstack.yml": api()})
    world.converge(snap)
    world.engine.stop_service("api")
    world.converge(snap, step=3)
    assert world.backend.running("api") == [] and world.engine.status()[0].status == "stopped"
    world.engine.start_service("api")
    world.converge(snap)
    assert len(world.backend.running("api")) == 1


def test_plan_is_read_only_and_exit_codes(world: World) -> None:
    snap = world.repo.commit({"api.dstack.yml": api("2")})
    result = world.engine.plan(snap)
    assert result.exit_code == 2 and len(result.plan.steps) == 3
    assert world.backend.creates() == [] and not (world.state / "state.json").exists()
    world.converge(snap)
    assert world.engine.plan(snap).exit_code == 0
    reader = Engine(world.state, BackendRegistry({"local": world.backend}), world.settings, read_only=True)
    assert [v.name for v in reader.status()] == ["api"]
    assert reader.plan(None).plan.empty, "no snapshot: plans from the last applied revision"


def test_recovery_adopts_a_replica_created_before_the_crash(world: World) -> None:
    snap = world.repo.commit({"api.dstack.yml": api()})
    world.engine.reconcile(snap)
    [rid] = world.backend.running("api")
    world.engine.close()
    # The crash: the replica exists and the journal says "create" with no outcome, state lost it.
    (world.state / "state.json").unlink()
    (world.state / "journal.jsonl").unlink()
    Journal(world.state).intent(Op.CREATE, rid, "api", "local", world.clock.t)
    world.engine = world.open()
    done = world.engine.recover()
    assert any("adopted" in d for d in done)
    world.converge(snap)
    assert world.backend.creates() == [rid], "not started a second time"
    assert world.backend.running("api") == [rid]


class Crash(BaseException):
    pass


# `open_state_write` needs work in flight on a worker while the state is written: the workers'
# crash test covers it (tests/reconciler/test_concurrency.py), this one applies inline.
@pytest.mark.parametrize("point", [p for p in apply_mod.FAULT_POINTS if p != "open_state_write"])
def test_crash_at_every_fault_point_converges_without_duplicates(
    world: World, point: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    snap = world.repo.commit({"web.dstack.yml": web(), "api.dstack.yml": api("2")})
    world.converge(snap)
    update = world.repo.commit({"web.dstack.yml": web("echo v2"), "api.dstack.yml": api("1")})
    hits = {"n": 0}

    def die(self: apply_mod.FaultHook, name: str) -> None:
        if name == point:
            hits["n"] += 1
            if hits["n"] == 1:
                raise Crash(point)

    monkeypatch.setattr(apply_mod.FaultHook, "__call__", die)
    with pytest.raises(Crash):
        world.converge(update)
    monkeypatch.undo()
    world.engine.store.release()  # the dead process's lock goes with it
    world.engine = world.open()
    world.engine.recover()
    world.converge(update, passes=20, step=3)
    running = world.backend.running()
    names = sorted(parse_replica_id(r).service_part for r in running)  # type: ignore[union-attr]
    assert names == ["api", "web"]
    assert world.engine.doc.services["web"].spec_hash[:8] in running[1]
    recorded = sorted(r.id for s in world.engine.doc.services.values() for r in s.replicas)
    assert recorded == running, "state and backend agree: nothing leaked, nothing forgotten"
    assert sorted(u for n in ("api", "web") for u in world.upstreams(n)) == running


def test_routes_and_status_files_are_plain_json(world: World) -> None:
    snap = world.repo.commit({"web.dstack.yml": web()})
    world.converge(snap)
    state = json.loads((world.state / "state.json").read_text())
    assert state["schema_version"] == 1 and state["serial"] >= 1 and state["lineage"]
    assert state["services"]["web"]["replicas"][0]["phase"] == "ready"


def test_loop_is_not_spun_by_work_it_cannot_do(world: World) -> None:
    snap = world.repo.commit({"web.dstack.yml": web()})
    world.converge(snap)
    broken = world.repo.commit({"web.dstack.yml": web() + "bogus_key: 1\n"})
    [rid] = world.backend.running("web")
    world.backend.crash(rid)
    report = world.engine.reconcile(broken)
    assert report.next_run_in == pytest.approx(2.0), "a failed replica's backoff is the next due time"
    world.clock.t += 3
    report = world.engine.reconcile(broken)
    assert [s.action.value for s in report.plan.steps] == ["restart_replica"], "healed at its last good spec"
    world.clock.t += 1
    world.engine.reconcile(broken)  # the restarted replica is probed ready
    report = world.engine.reconcile(broken)
    assert report.plan.empty and report.next_run_in is None, "kept service: nothing due, normal interval"


def test_secrets_in_error_text_are_redacted_from_state_journal_and_logs(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    snap = world.repo.commit({"web.dstack.yml": web(), "api.dstack.yml": api()})
    world.converge(snap)
    [rid] = world.backend.running("web")
    world.backend.crash(rid, message=f"exit 1; last log line: SECRET_TOKEN={SECRET}")
    world.backend.create_errors["web"] = PermanentError(f"refused token {SECRET}")
    world.clock.t += 100
    world.converge(snap)
    rec = world.engine.doc.services["web"]
    assert rec.status is ServiceStatus.STALLED
    for path in world.state.rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), f"secret leaked into {path}"
    assert "***" in (world.state / "state.json").read_text()
    assert SECRET not in caplog.text and "refused token ***" in caplog.text


def test_plan_shows_the_offer_and_ps_the_running_cost(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a paid offer the plan names it with its hourly price, and every replica created on it
    carries the price into state, so `ps` can sum the running cost per service and in total."""
    from backends.base import Offer
    from reconciler.render.plan_output import render_plan

    paid = Offer("local", "us-east-1", "g5.xlarge", cpus=4, memory_gb=16, gpu=None, spot=True, price=0.5)
    monkeypatch.setattr(world.backend, "offers", lambda requirements: [paid])
    snap = world.repo.commit({"api.dstack.yml": api("2")})

    text = render_plan(world.engine.plan(snap))
    assert "offer: local us-east-1 g5.xlarge spot, $0.50/h per replica (+2 replicas: $1.00/h)" in text

    world.converge(snap)
    (view,) = [v for v in world.engine.status() if v.name == "api"]
    assert [r.price for r in view.replicas] == [0.5, 0.5]
    assert view.replicas[0].offer == "local us-east-1 g5.xlarge spot"
    assert view.cost_per_hour == pytest.approx(1.0)
    state = json.loads((world.state / "state.json").read_text())
    assert [r["price"] for r in state["services"]["api"]["replicas"]] == [0.5, 0.5]


def test_an_unchanged_service_moves_to_the_new_revision_and_its_files(world: World) -> None:
    """Services carry no revision of their own (the set's is theirs): an unchanged one is recorded
    at the new revision, and a replica it starts there gets the new revision's folder."""
    first = world.repo.commit({"web.dstack.yml": web(), "api.dstack.yml": api("2")})
    world.converge(first)
    second = world.repo.commit({"web.dstack.yml": web(), "api.dstack.yml": api("3")})
    world.converge(second)
    rec = world.engine.doc.services["web"]
    assert rec.revision == second.revision
    [rid] = world.backend.running("web")
    world.backend.crash(rid)
    world.converge(second)
    [again] = world.backend.running("web")
    assert (world.backend.specs[again].workdir, world.backend.specs[again].revision) == (
        str(Path(second.root).absolute()), second.revision,
    )  # fmt: skip


def test_plan_copies_on_write_and_plans_what_a_deep_copy_plans(world: World) -> None:
    """`Engine.plan` observes into a scratch document whose records are copied when edited
    (reconciler.state.doc_copy.copy_on_write): over every edit observation makes (a replica gone,
    one exited, one draining gone, one whose address and handle moved, an orphan adopted into a
    known service and one into an unknown service) it plans exactly what it plans on a deep copy
    of the whole state, and the real state is left as it was, records and versions."""
    services = {f"s{i}.dstack.yml": api("2").replace("name: api", f"name: s{i}") for i in range(7)}
    snap = world.repo.commit(services)
    world.converge(snap)
    # s0's replicas drain: a plan with one replica fewer, applied once (not yet removed)
    world.engine.doc.services["s0"].replicas[0].phase = ReplicaPhase.DRAINING
    b = world.backend
    rid = {n: sorted(b.running(n)) for n in ("s0", "s1", "s2", "s3")}
    del b.replicas[rid["s0"][0]]  # a draining replica gone: dropped
    del b.replicas[rid["s1"][0]]  # a ready one gone: failed
    b.replicas[rid["s2"][0]] = replace(b.replicas[rid["s2"][0]], status=ReplicaStatus.EXITED, message="exit 3")
    b.replicas[rid["s3"][0]] = replace(b.replicas[rid["s3"][0]], address="http://moved:1", handle="h-moved")
    orphan = replace(b.replicas[rid["s3"][1]], replica_id="s4-0123abcd-7", service="s4", spec_hash=None)
    b.replicas[orphan.replica_id] = orphan  # adopted into a known service
    stray = replace(orphan, replica_id="zz-0123abcd-0", service="zz")
    b.replicas[stray.replica_id] = stray  # adopted into an unknown one
    before = world.engine.doc.model_dump_json()
    versions_before = {n: versions(r) for n, r in world.engine.doc.services.items()}
    world.clock.t += 3600  # past the failed replicas' backoff
    lazy = world.engine.plan(snap)
    doc_copy.COPY_ON_WRITE = False
    try:
        deep = world.engine.plan(snap)
    finally:
        doc_copy.COPY_ON_WRITE = True
    assert lazy.plan.steps == deep.plan.steps and dict(lazy.plan.changes) == dict(deep.plan.changes)
    assert lazy.notes == deep.notes and lazy.exit_code == deep.exit_code
    actions = {(s.action, s.service) for s in lazy.plan.steps}
    assert {(Action.ADD_REPLICA, "s0"), (Action.REMOVE_REPLICA, "s4"), (Action.DELETE_SERVICE, "zz")} <= actions
    assert world.engine.doc.model_dump_json() == before
    assert {n: versions(r) for n, r in world.engine.doc.services.items()} == versions_before
    world.engine.reconcile(snap)  # what the scratch documents saw, now for real
    phases = {n: [r.phase for r in rec.replicas] for n, rec in world.engine.doc.services.items()}
    assert ReplicaPhase.FAILED in phases["s1"] and ReplicaPhase.FAILED in phases["s2"]
    assert world.engine.doc.services["s3"].replica(rid["s3"][0]).address == "http://moved:1"  # type: ignore[union-attr]
