"""A service configured for aws or azure, driven by the real reconcile engine: provisioned through
the cloud backend (moto / FakeArm on loopback), probed on the replica's address (a tiny HTTP
server on 127.0.0.1 stands in for the VM), routed, scaled 1 -> 2 -> 1, and torn down when its file goes away."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import conftest_cloud as cloud
import pytest
from azure.core.credentials import AccessToken
from fake_arm import FakeArm

from backends.aws.backend import AwsBackend
from backends.azure.backend import AzureBackend
from backends.base import Backend, BackendRegistry
from backends.cloud.catalog import load_catalog
from backends.settings import AwsSettings, AzureSettings
from reconciler.engine.reconcile import Engine, EngineSettings, Snapshot
from reconciler.state.store import StateStore
from tidegate.routes_io import read_snapshot

moto_url, ec2, linux_ami = cloud.moto_url, cloud.ec2, cloud.linux_ami

SERVICE = """\
type: service
name: llm
image: ghcr.io/example/tiny:1
env:
  - HF_TOKEN
port: {port}
resources:
  gpu: T4
backends: [{backend}]
"""


@pytest.fixture
def replica_server() -> Iterator[int]:
    class Ok(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class Token:
    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("fake-arm-token", 4_102_444_800)


@pytest.fixture
def arm() -> Iterator[FakeArm]:
    fake = FakeArm().start()
    try:
        yield fake
    finally:
        fake.stop()


def aws_backend(owner: str, moto_url: str, linux_ami: str, arm: FakeArm) -> Backend:
    settings = AwsSettings(
        endpoint_url=moto_url, ami=linux_ami, allowed_cidr="127.0.0.1/32", address_host="127.0.0.1"
    )
    return AwsBackend(settings, owner, catalog=load_catalog())


def azure_backend(owner: str, moto_url: str, linux_ami: str, arm: FakeArm) -> Backend:
    settings = AzureSettings(
        subscription_id="sub-1",
        resource_group="rg-e2e",
        base_url=arm.url,
        allowed_cidr="127.0.0.1/32",
        ssh_public_key="ssh-ed25519 AAAA e2e",
        polling_interval=0,
        sdk_retries=0,
        live_offers=False,
    )
    return AzureBackend(settings, owner, catalog=load_catalog(), credential=Token())  # IP: 127.0.0.1


def upstreams(state: Path) -> list[str]:
    route = read_snapshot(state).services.get("llm")
    return [u.replica_id for u in route.upstreams if not u.draining] if route else []


def converge(engine: Engine, snap: Snapshot, done: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        engine.reconcile(snap)
        if done():
            return
        time.sleep(0.1)
    raise AssertionError(f"did not converge: {engine.status()}")


@pytest.mark.parametrize(
    "make", [pytest.param(aws_backend, id="aws"), pytest.param(azure_backend, id="azure")]
)
def test_cloud_service_is_provisioned_probed_routed_scaled_and_torn_down(
    make: Callable[[str, str, str, FakeArm], Backend],
    tmp_path: Path,
    replica_server: int,
    moto_url: str,
    linux_ami: str,
    arm: FakeArm,
) -> None:
    state = tmp_path / "state"
    owner = StateStore(state).installation().id
    backend = make(owner, moto_url, linux_ami, arm)
    engine = Engine(
        state,
        BackendRegistry({backend.name: backend}),
        EngineSettings(env={"HF_TOKEN": "hf-secret-xyz"}, drain_min=0.0, probe_timeout=1.0),
    )
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "llm.dstack.yml").write_text(SERVICE.format(port=replica_server, backend=backend.name))
    try:
        snap = Snapshot("1" * 40, repo)
        deadline = time.monotonic() + 30
        url = None
        while time.monotonic() < deadline and url is None:
            engine.reconcile(snap)
            route = read_snapshot(state).services.get("llm")
            url = route.upstreams[0].url if route and route.upstreams else None
            if url is None:
                time.sleep(0.1)
        assert url == f"http://127.0.0.1:{replica_server}", engine.status()
        (owned,) = backend.list_owned()
        assert owned.offer is not None and owned.offer.gpu is not None and owned.offer.gpu.name == "T4"
        for path in state.glob("*.json*"):
            assert "hf-secret-xyz" not in path.read_text()

        # Scale: two replicas (a second instance, both routed), then back to one (one terminated).
        (repo / "llm.dstack.yml").write_text(
            SERVICE.format(port=replica_server, backend=backend.name) + "replicas: 2\n"
        )
        two = Snapshot("3" * 40, repo)
        converge(engine, two, lambda: len(upstreams(state)) == 2)
        assert len(backend.list_owned()) == 2
        (repo / "llm.dstack.yml").write_text(SERVICE.format(port=replica_server, backend=backend.name))
        one = Snapshot("4" * 40, repo)
        converge(engine, one, lambda: len(backend.list_owned()) == 1 and len(upstreams(state)) == 1)

        (repo / "llm.dstack.yml").unlink()
        # A second service (blocked: its env var is missing) keeps the desired set non-empty, so
        # removing the file is a deliberate prune, not an empty commit.
        (repo / "keep.dstack.yml").write_text(
            SERVICE.format(port=replica_server, backend=backend.name)
            .replace("name: llm", "name: keep")
            .replace("HF_TOKEN", "MISSING_TOKEN")
        )
        engine.reconcile(Snapshot("2" * 40, repo))
        assert [r.replica_id for r in backend.list_owned()] == [], "removing the file tears the replica down"
    finally:
        engine.close()
        for info in backend.list_owned():
            backend.delete(info.replica_id)


CHILD = """
import json, sys
from pathlib import Path
from azure.core.credentials import AccessToken
from backends.aws.backend import AwsBackend
from backends.azure.backend import AzureBackend
from backends.base import BackendRegistry
from backends.cloud.catalog import load_catalog
from backends.settings import AwsSettings, AzureSettings
from reconciler.engine.reconcile import Engine, EngineSettings, Snapshot
from reconciler.state.store import StateStore

class Token:
    def get_token(self, *scopes, **kwargs):
        return AccessToken("fake-arm-token", 4_102_444_800)

kind, raw, state, repo = sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
owner = StateStore(state).installation().id
if kind == "aws":
    backend = AwsBackend(AwsSettings(**raw), owner, catalog=load_catalog())
else:
    backend = AzureBackend(AzureSettings(**raw), owner, catalog=load_catalog(), credential=Token())
eng = Engine(state, BackendRegistry({kind: backend}), EngineSettings(env={"HF_TOKEN": "x"}))
eng.recover()
eng.reconcile(Snapshot("1" * 40, repo))
print("survived", flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "make", [pytest.param(aws_backend, id="aws"), pytest.param(azure_backend, id="azure")]
)
def test_sigkill_after_create_then_restart_adopts_exactly_one(
    make: Callable[[str, str, str, FakeArm], Backend],
    tmp_path: Path,
    replica_server: int,
    moto_url: str,
    linux_ami: str,
    arm: FakeArm,
) -> None:
    import json
    import os
    import subprocess
    import sys

    state, repo = tmp_path / "state", tmp_path / "repo"
    repo.mkdir()
    owner = StateStore(state).installation().id
    backend = make(owner, moto_url, linux_ami, arm)
    (repo / "llm.dstack.yml").write_text(SERVICE.format(port=replica_server, backend=backend.name))
    raw = backend.settings.model_dump(exclude={"type"})  # type: ignore[attr-defined]
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, backend.name, json.dumps(raw), str(state), str(repo)],
        env={**os.environ, "TIDEGATE_FAULT": "after_create"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -9 and "survived" not in proc.stdout, proc.stderr
    assert len(backend.list_owned()) == 1  # created, but the state never heard of it
    engine = Engine(
        state,
        BackendRegistry({backend.name: backend}),
        EngineSettings(env={"HF_TOKEN": "x"}, drain_min=0.0, probe_timeout=1.0),
    )
    try:
        engine.recover()
        for _ in range(50):
            engine.reconcile(Snapshot("1" * 40, repo))
            route = read_snapshot(state).services.get("llm")
            if route and route.upstreams:
                break
            time.sleep(0.1)
        owned = backend.list_owned()
        assert len(owned) == 1, f"exactly one replica after the crash: {owned}"
        [rec] = engine.doc.services.values()
        assert [r.id for r in rec.replicas] == [owned[0].replica_id]
    finally:
        engine.close()
        for info in backend.list_owned():
            backend.delete(info.replica_id)
