"""The caches that make planning a large repo fast (issue 13) change no result: each is checked
against the uncached path, and each input that feeds a cache is changed to show the result moves.

- the code hash's scandir walk equals `tree_hash(root, shipped_files(root))` on a tree with every
  case the walk treats apart (reconciler.source.code_files);
- the desired-service memos (reconciler.engine.memo): a desired set built with them equals one
  built without, and a changed file, env value, backend set, domain or code file changes it;
- the per-pass offers memo (reconciler.engine.offers): a changed offer is seen on the next pass;
- the engine's no-op pass keeps planning a new state: a replica that failed is restarted.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import textwrap
from pathlib import Path

import pytest

from backends.base import BackendRegistry
from reconciler.config import loader
from reconciler.config.loader import PARSE_CACHE, load_tree
from reconciler.engine import memo
from reconciler.engine.autoscale import ScalingDecision
from reconciler.engine.desired import DesiredSet, build_desired
from reconciler.engine.offers import with_offers
from reconciler.engine.plan import Action, Target
from reconciler.engine.reconcile import Engine, EngineSettings, Snapshot
from reconciler.engine.targets import TargetSettings, build_targets
from reconciler.source import code_files
from reconciler.source.trees import tree_hash
from reconciler.state.records import ReplicaPhase, ReplicaRecord, RouteInfo, ServiceRecord, StateDoc
from reconciler.state.view import build_routes
from tests.reconciler.fakes import FakeBackend, FakeProber, only_local_ships_workdir
from tidegate.routes import RoutesSnapshot, TunnelRoute


def service(name: str, greeting: str = "hi", extra: str = "") -> str:
    return textwrap.dedent(
        f"""\
        type: service
        name: {name}
        env:
          - GREETING={greeting}
          - TOKEN
        commands:
          - python3 app.py 8000
        port: 8000
        auth: false
        resources:
          cpu: 1..
          memory: 64MB..
        """
    ) + extra


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def tricky_tree(root: Path) -> None:
    write(
        root,
        {
            "app.py": "print(1)\n",
            "run.sh": "#!/bin/sh\n",
            "lib/a/b.py": "B = 1\n",
            "lib/a/.dstack.yml": service("nested"),
            "lib/z.dstack.yml": service("zed"),
            "lib/node_modules/x.js": "1",
            "node_modules": "a file named like a skipped folder",
            "data/big.bin": "0",
            "keep/data/small.bin": "1",
            "keep/d/small.bin": "1",
            "x.log": "log",
            "sub/y.log": "log",
            "sub/only/this.txt": "ignored by its path",
            ".dstackignore": "# comment\n/data/\n*.log\nsub/only/this.txt\n",
            ".dstack/profiles.yml": "profiles: []\n",
            "sub/.dstack/kept.txt": "only the root .dstack/ is left out",
            ".git/HEAD": "ref\n",
            "__pycache__/m.pyc": "c",
        },
    )
    (root / "run.sh").chmod(0o755)
    os.symlink("app.py", root / "link-in")
    os.symlink("/etc/hostname", root / "link-out")
    os.symlink("lib", root / "linked-dir")
    os.symlink("missing-target", root / "dangling")
    os.symlink("../../../../outside", root / "lib" / "up-and-out")


def test_fast_code_hash_equals_the_tree_walk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tricky_tree(tmp_path)
    slow = tree_hash(tmp_path, code_files.shipped_files(tmp_path))
    assert code_files.code_hash(tmp_path) == slow
    monkeypatch.setattr(code_files, "FAST", False)
    assert code_files.code_hash(tmp_path) == slow
    monkeypatch.setattr(code_files, "FAST", True)
    for change in ("lib/a/b.py", "keep/d/small.bin", "sub/.dstack/kept.txt"):
        before = code_files.code_hash(tmp_path)
        (tmp_path / change).write_text("changed\n")
        after = code_files.code_hash(tmp_path)
        assert after != before, change
        assert after == tree_hash(tmp_path, code_files.shipped_files(tmp_path))
    before = code_files.code_hash(tmp_path)
    (tmp_path / "sub" / "y.log").write_text("ignored\n")
    (tmp_path / "keep" / "data" / "small.bin").write_text("ignored: `/data/` matches the name at any depth\n")
    (tmp_path / "lib" / "a" / ".dstack.yml").write_text(service("nested", "changed"))
    assert code_files.code_hash(tmp_path) == before  # ignored files and configs do not count
    (tmp_path / "app.py").chmod(0o755)
    assert code_files.code_hash(tmp_path) != before  # the mode counts
    assert code_files.code_hash(tmp_path) == tree_hash(tmp_path, code_files.shipped_files(tmp_path))


def build(root: Path, revision: str, **kw: object) -> DesiredSet:
    args: dict[str, object] = {
        "revision": revision,
        "workdir": str(root),
        "env": {"TOKEN": "secret-1"},
        "salt": "salt",
        "backends": ["local", "aws"],
        "ships_workdir": only_local_ships_workdir,
        "domain": "example.test",
    }
    args.update(kw)
    return build_desired(load_tree(root), **args)  # type: ignore[arg-type]


def uncached(root: Path, revision: str, **kw: object) -> DesiredSet:
    memo.enabled = PARSE_CACHE.enabled = code_files.FAST = False
    try:
        return build(root, revision, **kw)
    finally:
        memo.enabled = PARSE_CACHE.enabled = code_files.FAST = True


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "rev-1"
    write(root, {f"s{i}/.dstack.yml": service(f"s{i}") for i in range(3)})
    write(root, {"app.py": "print(1)\n", "pinned.dstack.yml": service("pinned", extra="backends: [aws]\n")})
    return root


def test_memoized_desired_set_equals_the_uncached_one(repo: Path) -> None:
    for _ in range(2):  # the second build is all hits
        assert build(repo, "rev-1") == uncached(repo, "rev-1")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        pytest.param(lambda root: write(root, {"s1/.dstack.yml": service("s1", "v2")}), "spec_hash", id="file"),
        pytest.param(lambda root: write(root, {"app.py": "print(2)\n"}), "spec_hash", id="code-file"),
        pytest.param(lambda root: (root / "app.py").chmod(0o755), "spec_hash", id="code-mode"),
        pytest.param(lambda root: write(root, {".dstackignore": "app.py\n"}), "spec_hash", id="dstackignore"),
        pytest.param(
            lambda root: write(root, {"s1/.dstack.yml": service("s1", extra="auth: true\n").replace("auth: false\n", "")}),
            "route",
            id="route-field",
        ),
    ],
)
def test_a_changed_input_changes_the_memoized_service(
    repo: Path, tmp_path: Path, change: object, field: str
) -> None:
    before = build(repo, "rev-1")
    changed = tmp_path / "rev-2"
    shutil.copytree(repo, changed, symlinks=True)
    change(changed)  # type: ignore[operator]
    after = build(changed, "rev-2")
    assert after == uncached(changed, "rev-2")
    assert getattr(after.services["s1"], field) != getattr(before.services["s1"], field)
    spec = after.services["s0"].spec_for(0, after.at)  # the set's files are its own
    assert (spec.revision, spec.workdir) == ("rev-2", str(changed))
    assert after.revision_of(after.services["s0"]) == "rev-2"


def test_an_unchanged_service_is_the_same_object_at_the_next_revision(repo: Path, tmp_path: Path) -> None:
    """Only the changed file's service is made again; the others carry no revision or folder, so
    they are the very objects of the last revision (what the identity memos downstream key by)."""
    before = build(repo, "rev-1")
    changed = tmp_path / "rev-2"
    shutil.copytree(repo, changed, symlinks=True)
    write(changed, {"s1/.dstack.yml": service("s1", "v2")})
    after = build(changed, "rev-2")
    assert after == uncached(changed, "rev-2")
    assert after.services["s1"] is not before.services["s1"]
    assert all(after.services[n] is before.services[n] for n in ("s0", "s2", "pinned"))
    assert all(d.at is None for d in after.services.values())
    assert before.at is not None and after.at is not None
    assert (before.at.revision, after.at.revision) == ("rev-1", "rev-2")
    assert after.services["s0"].spec_for(1, after.at).workdir == str(changed)
    assert after.services["s0"].spec_for(1, before.at).workdir == str(repo)


@pytest.mark.parametrize(
    "kw",
    [
        pytest.param({"env": {"TOKEN": "secret-2"}}, id="env-value"),
        pytest.param({"env": {}, "missing_env_ok": True}, id="env-missing"),
        pytest.param({"salt": "other"}, id="salt"),
        pytest.param({"domain": "other.test"}, id="domain"),
        pytest.param({"backends": ["aws", "local"], "default_backend": "aws"}, id="backend-set"),
        pytest.param({"default_backends": ["aws"]}, id="default-backends"),
        pytest.param({"ships_workdir": lambda backend: False}, id="ships-workdir"),
        pytest.param({"code_hash": lambda: "0" * 64}, id="code-hash"),
        pytest.param({"trusted": False}, id="trusted"),
    ],
)
def test_each_setting_feeding_the_memos_changes_the_set(repo: Path, kw: dict[str, object]) -> None:
    base = build(repo, "rev-1")
    assert base == uncached(repo, "rev-1")
    changed = build(repo, "rev-1", **kw)
    assert changed == uncached(repo, "rev-1", **kw)
    assert changed != base


def engine_at(state: Path, clock: list[float] | None = None) -> Engine:
    now = clock if clock is not None else [1000.0]
    return Engine(
        state,
        BackendRegistry({"local": FakeBackend(), "aws": FakeBackend(name="aws", ships_workdir=False)}),
        EngineSettings(drain_min=0.0, drain_grace=0.0, env={"TOKEN": "secret-1"}, domain="example.test"),
        clock=lambda: now[0],
        prober=FakeProber(),
    )


ROUTED = """\
model:
  name: m-{name}
  format: openai
rate_limits:
  - rps: 10
  - prefix: /v1/chat/
    rps: 0.5
    burst: 4
"""


def test_routes_built_without_validation_equal_validated_ones(repo: Path, tmp_path: Path) -> None:
    write(repo, {"s2/.dstack.yml": service("s2", extra=ROUTED.format(name="s2") + "replicas: 2\n")})
    with engine_at(tmp_path / "state") as engine:
        snap = Snapshot("rev-1", repo)
        for _ in range(3):
            engine.reconcile(snap)
        engine.stop_service("s0")
        engine.reconcile(snap)
        routes = engine.routes
    assert set(routes.services) == {"s0", "s1", "s2", "pinned"}
    assert routes.services["s2"].rate_limits and routes.services["s2"].upstreams
    assert routes.services["s0"].stopped
    validated = RoutesSnapshot.model_validate_json(routes.model_dump_json())
    assert validated == routes
    assert validated.model_dump_json() == routes.model_dump_json()


def test_no_op_passes_still_see_a_change_of_state(repo: Path, tmp_path: Path) -> None:
    """A pass with nothing new in the config still plans from the state it observes: a replica
    that died is restarted, a file changed in the same folder under a new revision rolls."""
    clock = [1000.0]
    with engine_at(tmp_path / "state", clock) as engine:
        snap = Snapshot("rev-1", repo)
        engine.reconcile(snap)
        engine.reconcile(snap)
        assert engine.reconcile(snap).plan.empty
        backend = engine.backends.get("local")
        assert isinstance(backend, FakeBackend)
        victim = next(r for r in backend.replicas.values() if r.service == "s1")
        backend.crash(victim.replica_id)
        engine.reconcile(snap)  # observed as failed; restarted once its backoff passed
        clock[0] += 3600
        restarts = engine.plan(snap).plan.steps
        assert [(s.action, s.service) for s in restarts] == [(Action.RESTART_REPLICA, "s1")]
        engine.reconcile(snap)
        changed = tmp_path / "rev-2"
        shutil.copytree(repo, changed)
        write(changed, {"s1/.dstack.yml": service("s1", "v2")})
        p = engine.plan(Snapshot("rev-2", changed)).plan
        assert p.services() == ["s1"]


def test_offers_are_asked_once_per_requirements_per_pass_and_again_next_pass(repo: Path) -> None:
    local = FakeBackend()
    registry = BackendRegistry({"local": local, "aws": FakeBackend(name="aws", ships_workdir=False)})
    ds = build(repo, "rev-1")
    placed, complete = with_offers(ds, registry)
    assert complete and {n: d.backend for n, d in placed.services.items()} == {
        "s0": "local", "s1": "local", "s2": "local", "pinned": "aws"
    }
    # three local services with one resource spec: one question (none for the one pinned to aws)
    assert [c for c in local.calls if c[0] == "offers"] == [("offers", "")]
    local.no_offers = True  # the catalog changed: the next pass sees it
    again, _ = with_offers(ds, registry)
    assert {d.backend for d in again.services.values()} == {"aws"}  # no `backends:`: moved
    assert len(again.services) == 4


def test_placed_and_moved_services_are_kept_per_offer_and_equal_the_uncached_ones(repo: Path) -> None:
    """The memos of what `with_offers` makes (a service with its offer; moved to another candidate
    backend): the same objects next pass while the offer is the same, a new one when it changes,
    and equal to what the uncached path makes."""
    local, aws = FakeBackend(), FakeBackend(name="aws", ships_workdir=False)
    registry = BackendRegistry({"local": local, "aws": aws})
    ds = build(repo, "rev-1")
    first, _ = with_offers(ds, registry)
    second, _ = with_offers(ds, registry)
    assert all(second.services[n] is d for n, d in first.services.items())
    memo.enabled = False
    try:
        assert with_offers(ds, registry)[0] == first
    finally:
        memo.enabled = True
    local.no_offers = True  # the unpinned services move to aws: the moved copies
    moved, _ = with_offers(ds, registry)
    assert {n: d.backend for n, d in moved.services.items()} == dict.fromkeys(moved.services, "aws")
    assert moved.services["s0"].spec_hash == ds.services["s0"].candidates["aws"]
    assert "files" not in moved.services["s0"].summary  # aws gets no copy of the checkout
    assert with_offers(ds, registry)[0].services["s0"] is moved.services["s0"]
    memo.enabled = False
    try:
        assert with_offers(ds, registry)[0] == moved
    finally:
        memo.enabled = True
    local.no_offers = False
    assert with_offers(ds, registry)[0].services["s0"] is first.services["s0"]


@pytest.mark.parametrize("subpath", [None, "lib", "lib/z.dstack.yml", "linked-dir", "missing"])
def test_one_walk_finds_what_discover_and_outside_links_find(tmp_path: Path, subpath: str | None) -> None:
    tricky_tree(tmp_path)
    write(
        tmp_path,
        {
            ".gitignore": "hidden/\n*.tmp.dstack.yml\n",
            "hidden/.dstack.yml": service("hidden"),
            "lib/.gitignore": "private/\n",
            "lib/private/.dstack.yml": service("private"),
            "lib/open/x.tmp.dstack.yml": service("tmp"),
            "lib/open/y.dstack.yml": service("y"),
        },
    )
    os.symlink("/etc", tmp_path / "hidden" / "out-of-an-ignored-folder")
    os.symlink("/etc/hostname", tmp_path / "lib" / "private" / "out.dstack.yml")
    os.symlink("../y.dstack.yml", tmp_path / "lib" / "open" / "in.dstack.yml")
    found, links = loader.scan(tmp_path, subpath)
    assert (found, links) == (loader.discover(tmp_path, subpath), loader.outside_links(tmp_path, subpath))
    if subpath is None:
        assert "lib/open/in.dstack.yml" in found and "hidden/.dstack.yml" not in found
        assert {d.path for d in links} >= {"hidden/out-of-an-ignored-folder", "lib/private/out.dstack.yml"}


def test_the_collector_is_paused_for_a_load_only_and_nested_loads_resume_it_once() -> None:
    import gc

    assert gc.isenabled()
    with memo.gc_paused():
        with memo.gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer load still runs
    assert gc.isenabled()
    gc.disable()  # a process that turned it off keeps it off
    try:
        with memo.gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_loads_objects_leave_the_pause_old_and_full_collections_keep_coming() -> None:
    """memo._promote: what a pause made is not left in generation 0 (whose next collection
    would walk all of it), cyclic garbage made in it is still freed by a full collection, and
    a pause that made few objects is left as it was, and after FULL_EVERY promotions without a
    full collection the next pause ends with one."""
    import gc

    class Node:
        def __init__(self) -> None:
            self.me = self

    def young_collections() -> int:
        return int(gc.get_stats()[0]["collections"])

    gc.collect()
    before = young_collections()
    with memo.gc_paused():
        kept = [{"n": [i]} for i in range(20_000)]  # tracked objects that live on
        Node()  # a cycle, garbage at once
    assert gc.get_count()[0] < 1_000  # not the 40,000 objects made in the pause
    after = [[i] for i in range(100)]  # allocations after the pause
    assert young_collections() == before  # nothing young to collect
    assert gc.collect() >= 1  # the cycle, collected by a full collection
    del kept, after
    before = young_collections()
    with memo.gc_paused():
        few = [{"n": [i]} for i in range(2_000)]  # fewer than PROMOTE_MIN: left young,
    after = [[i] for i in range(100)]
    assert young_collections() > before  # collected at the next allocation, as before
    del few, after
    full = gc.get_stats()[2]["collections"]
    for _ in range(memo.FULL_EVERY):
        with memo.gc_paused():
            made = [{"n": [i]} for i in range(memo.PROMOTE_MIN)]
        del made
    assert gc.get_stats()[2]["collections"] == full  # promoted only
    with memo.gc_paused():
        made = [{"n": [i]} for i in range(memo.PROMOTE_MIN)]
    assert gc.get_stats()[2]["collections"] == full + 1  # the next one ran a full collection
    del made


def test_memos_stay_linear_past_their_first_size() -> None:
    """Eviction pops the oldest entry in O(1): 20,000 services through a 4,000-entry memo."""
    small: memo.IdentityMemo[int] = memo.IdentityMemo(min_entries=4_000)
    objects = [object() for _ in range(20_000)]
    for i, obj in enumerate(objects):
        assert small.get(obj, "k", lambda i=i: i) == i  # type: ignore[misc]
    assert small.get(objects[-1], "k", lambda: -1) == len(objects) - 1  # kept: the newest
    assert small.get(objects[0], "k", lambda: -1) == -1  # evicted: the oldest


def test_a_kept_route_changes_with_each_of_its_inputs() -> None:
    route = RouteInfo(host="web.example.test", auth=True, min_replicas=0, max_replicas=2)
    replica = ReplicaRecord(id="web-1", service="web", spec_hash="h", ordinal=0, backend="aws",
                            phase=ReplicaPhase.READY, address="http://10.0.0.1:8000")
    doc = StateDoc(services={"web": ServiceRecord(name="web", spec_hash="h", route=route, replicas=[replica])})
    seen = [build_routes(doc, "example.test")]

    def changed(**kw: object) -> None:
        rec = doc.services["web"]
        for key, value in kw.items():
            if key == "pr":
                continue  # a preview pull request: passed to build_routes
            target = rec.replicas[0] if key in ("tunnel", "phase", "address") else rec
            setattr(target, key, value)
        routes = build_routes(doc, "example.test", {"web": 7} if kw.get("pr") else None)
        assert routes != seen[-1], kw
        assert routes == RoutesSnapshot.model_validate_json(routes.model_dump_json())
        seen.append(routes)

    assert build_routes(doc, "example.test") == seen[0]  # nothing changed: the same route
    assert build_routes(doc, "example.test").services["web"] is seen[0].services["web"]
    changed(tunnel=TunnelRoute(backend="aws", host="1.2.3.4", port=22, user="t", host_key="ssh-ed25519 A", service_port=8000))
    changed(tunnel=TunnelRoute(backend="aws", host="1.2.3.5", port=22, user="t", host_key="ssh-ed25519 A", service_port=8000))
    changed(address="http://10.0.0.2:8000")
    changed(phase=ReplicaPhase.DRAINING)
    changed(stopped=True)
    changed(unrouted_at=1.0)
    changed(route=RouteInfo(host="web.example.test", auth=False, min_replicas=0, max_replicas=2))
    changed(pr=True)


def test_the_fast_copy_of_a_placed_service_equals_dataclasses_replace(repo: Path) -> None:
    from dataclasses import fields, replace

    from backends.base import Offer
    from reconciler.engine.offers import _evolve

    d = build(repo, "rev-1").services["s0"]
    offer = Offer("local", "here", "fake", 1, 1.0, None, False, 0.0)
    made = _evolve(d, template=_evolve(d.template, offer=offer))
    assert made == replace(d, template=replace(d.template, offer=offer))
    assert made.template.offer is offer and d.template.offer is None  # the original is untouched
    assert [f.name for f in fields(made)] == list(vars(made))


def test_targets_made_without_init_are_the_dataclass_values(tmp_path: Path) -> None:
    """build_targets makes each Target without its `__init__` and shares a fixed count's decision
    (reconciler.engine.targets): the very values the plain constructors give, for fixed counts,
    autoscaled ranges, stopped, stalled and backing-off services."""
    write(tmp_path, {
        "a/.dstack.yml": service("fixed"),
        "b/.dstack.yml": service("three", extra="replicas: 3\n"),
        "c/.dstack.yml": service("zero", extra="replicas: 0\n"),
        "d/.dstack.yml": service("auto", extra="replicas: 1..4\nscaling:\n  metric: rps\n  target: 5\n"),
        "e/.dstack.yml": service("stalled"), "f/.dstack.yml": service("stopped"), "g/.dstack.yml": service("backoff"),
    })  # fmt: skip
    settings = EngineSettings(env={"TOKEN": "t0ken-value"})
    with Engine(tmp_path / "state", BackendRegistry({"local": FakeBackend()}), settings, prober=FakeProber()) as engine:
        ds = engine.desired(Snapshot("r1", tmp_path))
        doc = StateDoc(services={
            "stalled": ServiceRecord(name="stalled", spec_hash=ds.services["stalled"].spec_hash, stalled_spec=ds.services["stalled"].spec_hash),
            "stopped": ServiceRecord(name="stopped", spec_hash="x", stopped=True, desired_count=1),
            "backoff": ServiceRecord(name="backoff", spec_hash="x", backoff_until=2e9, reason="quota"),
        })  # fmt: skip
        desired, decisions, _ = build_targets(doc, ds, {}, set(), 1e9, TargetSettings(drain_grace=9.0), mutate=False)
    assert set(desired.services) == set(ds.services) == set(decisions)
    for name, t in desired.services.items():
        plain = Target(**{f.name: getattr(t, f.name) for f in dataclasses.fields(Target)})
        assert (t, vars(t), repr(t), type(t)) == (plain, vars(plain), repr(plain), Target)
        dec = decisions[name]
        assert dec == ScalingDecision(**{f.name: getattr(dec, f.name) for f in dataclasses.fields(ScalingDecision)})
    counts = {n: (t.count, t.keep, decisions[n].reason) for n, t in desired.services.items()}
    assert counts["fixed"] == (1, False, "fixed count 1") and counts["three"] == (3, False, "fixed count 3")
    assert counts["zero"] == (0, False, "fixed count 0") and counts["stopped"][:2] == (0, False)
    assert counts["stalled"][1] and counts["backoff"][1] and desired.services["auto"].count == 1
    assert decisions["fixed"] is decisions["stalled"]  # frozen: one object per fixed count
