"""Probes are bounded: a `/` that streams forever or a server that trickles its headers never holds a
pass. Real servers on 127.0.0.1 (processes, and replicas on the real local backend)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from backends.base import BackendRegistry
from backends.local.backend import LocalBackend
from reconciler.config.models import ProbeSpec
from reconciler.engine.probe import ProbeResult, fan_out, probe_alive, probe_http, probe_replica
from reconciler.engine.reconcile import Engine, EngineSettings, Snapshot
from reconciler.state.records import ReplicaPhase
from reconciler.state.store import StateStore
from tidegate.routes import ModelFormat, ModelRoute
from tidegate.routes_io import read_snapshot

T = TypeVar("T")

# Shared by the in-process servers and the replica programs below.
SERVER = """\
import socket, sys, threading, time
MODE, PORT = sys.argv[1], int(sys.argv[2])
HEAD = b"HTTP/1.1 200 OK\\r\\nContent-Type: text/plain\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n"
def serve(c):
    try:
        c.recv(65536)
        if MODE == "stream":  # headers at once, then a body that never ends
            c.sendall(HEAD)
            while True:
                c.sendall(b"400\\r\\n" + b"x" * 1024 + b"\\r\\n")
                time.sleep(0.005)
        c.sendall(b"HTTP/1.1 200 OK\\r\\nX-Slow: ")  # trickle: one header byte at a time, forever
        while True:
            c.sendall(b"a")
            time.sleep(0.05)
    except OSError:
        pass
    finally:
        c.close()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", PORT))
s.listen(64)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """Start a stream/trickle server (its own process); returns its address."""
    import subprocess
    import sys

    procs: list[subprocess.Popen[bytes]] = []

    def start(mode: str) -> str:
        port = free_port()
        script = tmp_path / "server.py"
        script.write_text(SERVER)
        procs.append(subprocess.Popen([sys.executable, str(script), mode, str(port)]))
        end = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return f"http://127.0.0.1:{port}"
            except OSError:
                assert time.monotonic() < end, "server did not start"
                time.sleep(0.02)

    yield start
    for p in procs:
        p.kill()
        p.wait(5)


def finishes(call: Callable[[], T], within: float) -> T:
    """Run `call` on a thread; it must return within `within` s (an unbounded probe never does)."""
    out: list[T] = []
    t = threading.Thread(target=lambda: out.append(call()), daemon=True)
    t.start()
    t.join(within)
    assert not t.is_alive(), f"still running after {within:g}s"
    return out[0]


CHAT = ModelRoute(name="m", format=ModelFormat.OPENAI)
HEALTH = ProbeSpec.model_validate({"type": "http", "url": "/health", "timeout": "1s"})


@pytest.mark.parametrize(
    ("mode", "probe", "ready"),
    [
        pytest.param("stream", lambda a: probe_replica(a, None, 1.0), True, id="readiness-stream-is-up"),
        pytest.param("stream", lambda a: probe_alive(a, CHAT, 1.0), True, id="liveness-stream-is-alive"),
        pytest.param("stream", lambda a: probe_http(a, HEALTH), True, id="dstack-probe-stream-2xx"),
        pytest.param("stream", lambda a: probe_replica(a, CHAT, 1.0), True, id="model-probe-stream"),
        pytest.param("trickle", lambda a: probe_replica(a, None, 1.0), False, id="readiness-trickle-fails"),
        pytest.param("trickle", lambda a: probe_alive(a, None, 1.0), False, id="liveness-trickle-fails"),
        pytest.param("trickle", lambda a: probe_http(a, HEALTH), False, id="dstack-probe-trickle-fails"),
    ],
)
def test_a_probe_reads_the_status_line_under_one_deadline(
    server: Callable[[str], str], mode: str, probe: Callable[[str], ProbeResult], ready: bool
) -> None:
    address = server(mode)
    res = finishes(lambda: probe(address), within=15.0)
    assert res.ready is ready, res
    if not ready:
        assert "no answer within 1s" in res.detail


def test_fan_out_runs_probes_at_once_and_keeps_their_order(server: Callable[[str], str]) -> None:
    trickle, stream = server("trickle"), server("stream")
    # Every probe waits at a barrier for all of them: run one at a time, the first would break it.
    together = threading.Barrier(8)

    def probe(address: str) -> ProbeResult:
        together.wait(timeout=30)
        return probe_replica(address, None, 1.0)

    calls = [lambda a=a: probe(a) for a in [trickle, stream] * 4]
    results = finishes(lambda: fan_out(calls, workers=8), within=60.0)
    assert [r.ready for r in results] == [False, True] * 4


# --- the engine with real replicas on the local backend -------------------------------------------

SERVICE = """\
type: service
name: {name}
commands:
  - python3 server.py {mode} 8000
port: 8000
"""
PLAIN = """\
type: service
name: plain
commands:
  - python3 -m http.server 8000 --bind 127.0.0.1
port: 8000
"""


@pytest.mark.slow
def test_streaming_and_trickling_services_never_hold_a_pass_and_stop_is_fast(tmp_path: Path) -> None:
    state, repo = tmp_path / "state", tmp_path / "repo"
    repo.mkdir()
    (repo / "server.py").write_text(SERVER)
    (repo / "stream.dstack.yml").write_text(SERVICE.format(name="stream", mode="stream"))
    (repo / "trickle.dstack.yml").write_text(SERVICE.format(name="trickle", mode="trickle"))
    (repo / "plain.dstack.yml").write_text(PLAIN)
    snap = Snapshot("1" * 40, repo)
    backend = LocalBackend(state / "replicas", owner=StateStore(state).installation().id, grace=1.0)
    settings = EngineSettings(probe_timeout=0.5, recheck_interval=1.0, drain_min=0.0)
    eng = Engine(state, BackendRegistry({"local": backend}), settings)

    def routed(name: str) -> bool:
        route = read_snapshot(state).services.get(name)
        return bool(route and route.upstreams)

    try:
        end = time.monotonic() + 90
        passes = 0
        while not (routed("stream") and routed("plain")):
            assert time.monotonic() < end, eng.status()
            finishes(lambda: eng.reconcile(snap), within=20.0)
            passes += 1
            time.sleep(0.1)
        assert not routed("trickle"), "headers never complete: not ready"
        trickle = eng.doc.services["trickle"].replicas[0]
        assert trickle.phase is ReplicaPhase.PROVISIONING
        # Liveness re-probes of the streaming replica pass, bounded too.
        time.sleep(1.1)
        finishes(lambda: eng.reconcile(snap), within=20.0)
        assert routed("stream") and eng.doc.services["stream"].replicas[0].probe_failures == 0
        # stop: the next pass drains and deletes it; nothing waits on the endless body.
        eng.stop_service("stream")
        t0 = time.monotonic()
        while any(i.service == "stream" for i in backend.list_owned()):
            assert time.monotonic() - t0 < 30, eng.status()
            finishes(lambda: eng.reconcile(snap), within=20.0)
            time.sleep(0.1)
        assert not routed("stream") and routed("plain")
    finally:
        eng.close()
        for info in backend.list_owned():
            backend.delete(info.replica_id)
