"""apply_plan: journal before every side effect, per-service error boundary, fault hook; probes."""

from __future__ import annotations

import json
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeBackend

from backends.base import BackendRegistry, ReplicaInfo, ReplicaSpec, TemporaryError
from reconciler.engine.apply import ApplyContext, FaultHook, apply_plan, backoff_delay
from reconciler.engine.autoscale import ScalingPolicy
from reconciler.engine.desired import DesiredService
from reconciler.engine.plan import Desired, Target, plan
from reconciler.engine.probe import probe_replica
from reconciler.state.journal import Journal
from reconciler.state.records import RouteInfo, StateDoc
from tidegate.routes import ModelFormat, ModelRoute


def desired_service(name: str, spec_hash: str = "c" * 64) -> DesiredService:
    return DesiredService(
        name=name,
        spec_hash=spec_hash,
        config_path=f"{name}.dstack.yml",
        backend="local",
        min_replicas=1,
        max_replicas=1,
        scaling=None,
        template=ReplicaSpec(
            replica_id="", service=name, spec_hash=spec_hash, ordinal=-1, port=8000, env={"K": "v"}
        ),
        route=RouteInfo(host=f"{name}.localhost"),
    )


class JournalCheckingBackend(FakeBackend):
    """Asserts, at the moment of each side effect, that its intent is already in the journal."""

    journal_path: Path | None = None

    def _intent_open(self, rid: str) -> bool:
        assert self.journal_path is not None
        lines = [json.loads(x) for x in self.journal_path.read_text().splitlines()]
        return lines[-1]["kind"] == "intent" and lines[-1]["replica"] == rid

    def create(self, spec: ReplicaSpec) -> ReplicaInfo:
        assert self._intent_open(spec.replica_id)
        return super().create(spec)

    def delete(self, replica_id: str) -> None:
        assert self._intent_open(replica_id)
        super().delete(replica_id)


def test_every_side_effect_is_journaled_first_and_one_bad_service_does_not_stop_others(
    tmp_path: Path,
) -> None:
    backend = JournalCheckingBackend()
    backend.journal_path = tmp_path / "journal.jsonl"
    backend.create_errors["bad"] = RuntimeError("backend bug")  # type: ignore[assignment]
    backend.create_errors["slow"] = TemporaryError("throttled", delay=30)
    journal = Journal(tmp_path)
    services = {n: desired_service(n) for n in ("alpha", "bad", "slow", "zulu")}
    doc = StateDoc(lineage="x")
    p = plan(Desired({n: Target(n, d.spec_hash, 2) for n, d in services.items()}), {}, 100.0)
    ctx = ApplyContext(BackendRegistry({"local": backend}), journal, 100.0, FaultHook(None))
    outcomes = {o.service: o for o in apply_plan(p, doc, services, ctx)}
    assert outcomes["alpha"].error is None and outcomes["zulu"].error is None
    assert "RuntimeError" in (outcomes["bad"].error or "")
    assert len(backend.running()) == 4
    assert doc.services["bad"].backoff_until == 102.0  # base backoff after the first failure
    assert doc.services["slow"].backoff_until == 130.0  # the backend's own delay wins when longer
    entries = [json.loads(x) for x in backend.journal_path.read_text().splitlines()]
    outcomes_by_intent = {e["intent_id"]: e["outcome"] for e in entries if e["kind"] == "outcome"}
    intents = [e for e in entries if e["kind"] == "intent"]
    assert all(outcomes_by_intent.get(i["intent_id"]) in ("ok", "error") for i in intents)
    assert "v" not in {str(v) for e in entries for v in e.values()}, "no env values in the journal"


@pytest.mark.parametrize(
    ("attempts", "delay"),
    [
        pytest.param(1, 2.0, id="first"),
        pytest.param(4, 16.0, id="doubles"),
        pytest.param(20, 300.0, id="capped"),
    ],
)
def test_backoff_delay(attempts: int, delay: float) -> None:
    assert backoff_delay(attempts, 2.0, 300.0) == delay


def test_fault_hook_rejects_unknown_points() -> None:
    with pytest.raises(ValueError, match="unknown fault point"):
        FaultHook("after_lunch")


def test_fault_hook_kills_the_process_on_the_nth_hit() -> None:
    code = (
        "from reconciler.engine.apply import FaultHook\n"
        "f = FaultHook('after_create:2')\n"
        "f('after_intent'); f('after_create'); print('survived first', flush=True)\n"
        "f('after_create'); print('survived second', flush=True)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.returncode == -9
    assert proc.stdout.splitlines() == ["survived first"]


# -- readiness probes against real sockets --------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    seen: list[tuple[str, str, Any]] = []
    status = 200

    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, body: Any = None) -> None:
        data = json.dumps(body or {"ok": True}).encode()
        self.send_response(type(self).status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        type(self).seen.append(("GET", self.path, None))
        self._reply()

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append(("POST", self.path, body))
        self._reply()


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self) -> tuple[Any, Any]:
        request, _ = super().get_request()
        return request, ("local", 0)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[str, str]]:
    Handler.seen = []
    Handler.status = 200
    tcp = HTTPServer(("127.0.0.1", 0), Handler)
    sock = tmp_path / "http.sock"
    uds = UnixHTTPServer(str(sock), Handler)
    threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True) for s in (tcp, uds)]
    for t in threads:
        t.start()
    try:
        yield f"http://127.0.0.1:{tcp.server_address[1]}", f"unix://{sock}"
    finally:
        for s in (tcp, uds):
            s.shutdown()
            s.server_close()


def test_probe_plain_service_over_tcp_and_unix_socket(servers: tuple[str, str]) -> None:
    for address in servers:
        assert probe_replica(address, None, 2.0).ready
    assert [m for m, _, _ in Handler.seen] == ["GET", "GET"]
    Handler.status = 404
    assert probe_replica(servers[1], None, 2.0).ready, "any status below 500 means it is up"
    Handler.status = 503
    assert not probe_replica(servers[0], None, 2.0).ready


def test_probe_model_sends_a_one_token_completion(servers: tuple[str, str]) -> None:
    openai = ModelRoute(name="m", format=ModelFormat.OPENAI, prefix="/v1")
    assert probe_replica(servers[1], openai, 2.0).ready
    tgi = ModelRoute(name="m", format=ModelFormat.TGI)
    assert probe_replica(servers[0], tgi, 2.0).ready
    (_, p1, b1), (_, p2, b2) = Handler.seen
    assert p1 == "/v1/chat/completions" and b1["max_tokens"] == 1 and b1["model"] == "m"
    assert p2 == "/generate" and b2["parameters"]["max_new_tokens"] == 1


def test_probe_refused_is_not_ready(tmp_path: Path) -> None:
    assert not probe_replica(f"unix://{tmp_path}/missing.sock", None, 0.5).ready
    assert not probe_replica("http://127.0.0.1:9", None, 0.5).ready


def test_scaling_policy_is_carried_in_desired() -> None:
    d = desired_service("web")
    assert d.spec_for(3).replica_id == "web-cccccccc-3" and d.spec_for(3).env == {"K": "v"}
    assert ScalingPolicy(min=0, max=2, target=1).window == 60
