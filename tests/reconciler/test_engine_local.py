"""The engine driving the real local backend: a real process, a real unix socket, a real probe."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from backends.base import BackendRegistry
from backends.local.backend import LocalBackend
from reconciler.engine.reconcile import Engine, EngineSettings, Snapshot
from reconciler.state.store import StateStore
from tidegate.routes_io import read_snapshot

SERVICE = """\
type: service
name: hello
env:
  - GREETING
commands:
  - python3 -m http.server 8000 --bind 127.0.0.1
port: 8000
"""


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[tuple[Engine, LocalBackend]]:
    state = tmp_path / "state"
    owner = StateStore(state).installation().id
    backend = LocalBackend(state / "replicas", owner=owner, grace=2.0)
    eng = Engine(
        state,
        BackendRegistry({"local": backend}),
        EngineSettings(env={"GREETING": "hi-secret-xyz"}, drain_min=0.0, probe_timeout=1.0),
    )
    try:
        yield eng, backend
    finally:
        eng.close()
        for info in backend.list_owned():
            backend.delete(info.replica_id)


def until_routed(eng: Engine, snap: Snapshot, name: str, deadline: float = 60.0) -> str:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        eng.reconcile(snap)
        route = read_snapshot(eng.state_dir).services.get(name)
        if route and route.upstreams:
            return route.upstreams[0].url
        time.sleep(0.2)
    raise AssertionError(f"{name} never became ready: {eng.status()}")


def test_local_service_is_deployed_probed_routed_and_torn_down(
    engine: tuple[Engine, LocalBackend], tmp_path: Path
) -> None:
    eng, backend = engine
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "hello.dstack.yml").write_text(SERVICE)
    (repo / "index.html").write_text("hello from the repo\n")
    snap = Snapshot("1" * 40, repo)
    url = until_routed(eng, snap, "hello")
    assert url.startswith("unix://")
    with httpx.Client(transport=httpx.HTTPTransport(uds=url.removeprefix("unix://")), timeout=5) as c:
        assert "hello from the repo" in c.get("http://replica/index.html").text
    assert eng.reconcile(snap).plan.empty
    for path in eng.state_dir.glob("*.json*"):
        assert "hi-secret-xyz" not in path.read_text()

    empty = tmp_path / "repo2"
    empty.mkdir()
    (empty / "other.txt").write_text("no configs\n")
    (empty / "x.dstack.yml").write_text("type: task\ncommands: [echo]\n")  # another type: skipped
    eng.reconcile(Snapshot("2" * 40, empty))
    assert len(backend.list_owned()) == 1, "a commit without services prunes nothing"
    (repo / "hello.dstack.yml").unlink()
    (repo / "keep.dstack.yml").write_text(
        SERVICE.replace("name: hello", "name: keep").replace("GREETING", "NOPE")
    )
    gone = Snapshot("3" * 40, repo)
    eng.reconcile(gone)
    # First out of the routes (withdrawn: 404 for new requests), the replica still serving what
    # is in flight; stopped once drained (drain_min later: nothing is in flight).
    assert eng.routes.services["hello"].withdrawn and len(backend.list_owned()) == 1
    deadline = time.monotonic() + 30
    while backend.list_owned() and time.monotonic() < deadline:
        time.sleep(0.2)
        eng.reconcile(gone)
    assert backend.list_owned() == [], "removing the file tears the service down"
    assert "hello" not in eng.routes.services
    [row] = eng.status()
    assert row.name == "keep" and row.status == "blocked" and "NOPE" in row.reason


CHILD = """
import sys
from pathlib import Path
from backends.base import BackendRegistry
from backends.local.backend import LocalBackend
from reconciler.engine.reconcile import Engine, EngineSettings, Snapshot
from reconciler.state.store import StateStore
state, repo = Path(sys.argv[1]), Path(sys.argv[2])
backend = LocalBackend(state / "replicas", owner=StateStore(state).installation().id, grace=2.0)
eng = Engine(state, BackendRegistry({"local": backend}), EngineSettings(env={"GREETING": "x"}))
eng.recover()
eng.reconcile(Snapshot("1" * 40, repo))
print("survived", flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("point", ["after_intent", "after_create", "after_outcome", "after_state_write"])
def test_sigkill_mid_apply_then_restart_converges_without_duplicates(tmp_path: Path, point: str) -> None:
    import subprocess
    import sys

    state, repo = tmp_path / "state", tmp_path / "repo"
    repo.mkdir()
    (repo / "hello.dstack.yml").write_text(SERVICE)
    env = {**__import__("os").environ, "TIDEGATE_FAULT": point}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(state), str(repo)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -9 and "survived" not in proc.stdout, proc.stderr
    owner = StateStore(state).installation().id
    backend = LocalBackend(state / "replicas", owner=owner, grace=2.0)
    eng = Engine(
        state, BackendRegistry({"local": backend}), EngineSettings(env={"GREETING": "x"}, probe_timeout=1.0)
    )
    try:
        eng.recover()
        until_routed(eng, Snapshot("1" * 40, repo), "hello")
        owned = backend.list_owned()
        assert len(owned) == 1, f"exactly one replica after the crash: {owned}"
        [rec] = eng.doc.services.values()
        assert [r.id for r in rec.replicas] == [owned[0].replica_id]
    finally:
        eng.close()
        for info in backend.list_owned():
            backend.delete(info.replica_id)
