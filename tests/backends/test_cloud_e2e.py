"""A service configured for aws or azure, driven by the real reconcile engine: provisioned through
the cloud backend (moto / FakeArm on loopback), probed and routed through its SSH tunnel (each
instance is a real sshd on 127.0.0.1 configured from that instance's user data, in front of a tiny
HTTP server standing in for the service), scaled 1 -> 2 -> 1, and torn down when its file goes away.
The network rules open only SSH to the gateway's address; the user data carries the pinned host
key and the installation's key, and nothing of the reconciler's own environment."""

from __future__ import annotations

import base64
import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterator
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
from backends.cloud.tunnels import Backoff, CloudTunnels, TunnelTarget
from backends.settings import AwsSettings, AzureSettings
from reconciler.engine.probe import probe_replica
from reconciler.engine.reconcile import Engine, EngineSettings, Snapshot
from reconciler.state.store import StateStore
from tests.support.hello_server import hello_server
from tests.support.sshd import Sshd, require_sshd
from tests.support.userdata import RECONCILER_ONLY, check_tunnel_user_data
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
    with hello_server("ok") as port:
        yield port


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


class Instances:
    """The "VMs": per replica, an sshd on loopback configured from the user data the cloud API holds
    for it (started when the tunnel first goes there)."""

    def __init__(self, kind: str, folder: Path, ec2: Any, arm: FakeArm) -> None:
        self.kind, self.folder, self.ec2, self.arm = kind, folder, ec2, arm
        self.sshds: dict[tuple[str, str], Sshd] = {}
        self.lock = threading.Lock()
        self.service_port = 0  # the replica's port, set by the test

    def user_data(self, replica_id: str) -> str:
        if self.kind == "aws":
            live = cloud.instances_tagged(self.ec2, "tidegate:replica", replica_id)
            raw = self.ec2.describe_instance_attribute(InstanceId=live[0]["InstanceId"], Attribute="userData")
            return base64.b64decode(raw["UserData"]["Value"]).decode()
        vms = [
            r for k, r in self.arm.resources.items()
            if "/virtualmachines/" in k and r.get("tags", {}).get("tidegate:replica") == replica_id
        ]  # fmt: skip
        return base64.b64decode(vms[0]["properties"]["osProfile"]["customData"]).decode()

    def resolve(self, target: TunnelTarget) -> TunnelTarget:
        with self.lock:
            key = (target.replica_id, target.host_key)
            if key not in self.sshds:
                folder = self.folder / f"{target.replica_id}-{len(self.sshds)}"
                self.sshds[key] = Sshd(self.user_data(target.replica_id), folder).start()
            return dataclasses.replace(target, host="127.0.0.1", port=self.sshds[key].port)

    def close(self) -> None:
        for sshd in self.sshds.values():
            sshd.close()


@pytest.fixture
def instances(tmp_path: Path, ec2: Any, arm: FakeArm, request: pytest.FixtureRequest) -> Iterator[Instances]:
    require_sshd()
    kind = request.node.callspec.id
    made = Instances(kind, tmp_path / "instances", ec2, arm)
    try:
        yield made
    finally:
        made.close()


def tunnels_for(state: Path, kind: str, instances: Instances | None, active: bool = True) -> CloudTunnels:
    return CloudTunnels(
        state,
        kind,
        active=active,
        backoff=Backoff(0.05, 0.5),
        connect_timeout=3.0,
        resolve=instances.resolve if instances is not None else None,
    )


def aws_backend(owner: str, moto_url: str, linux_ami: str, arm: FakeArm, tunnels: CloudTunnels) -> Backend:
    settings = AwsSettings(
        endpoint_url=moto_url,
        ami=linux_ami,
        allowed_cidr="127.0.0.1/32",
        address_host="127.0.0.1",
        tunnel_user="nobody",  # an account that exists on this machine, for the loopback sshd
    )
    return AwsBackend(settings, owner, catalog=load_catalog(), tunnels=tunnels)


def azure_backend(owner: str, moto_url: str, linux_ami: str, arm: FakeArm, tunnels: CloudTunnels) -> Backend:
    settings = AzureSettings(
        subscription_id="sub-1",
        resource_group="rg-e2e",
        base_url=arm.url,
        allowed_cidr="127.0.0.1/32",
        ssh_public_key="ssh-ed25519 AAAA e2e",
        polling_interval=0,
        sdk_retries=0,
        live_offers=False,
        tunnel_user="nobody",
    )
    return AzureBackend(settings, owner, catalog=load_catalog(), credential=Token(), tunnels=tunnels)


def check_exposure(kind: str, backend: Backend, instances: Instances, replica_id: str) -> None:
    """Only SSH (22) from the gateway's address; the user data pins the host key on the tag."""
    if kind == "aws":
        (inst,) = cloud.instances_tagged(instances.ec2, "tidegate:replica", replica_id)
        host_key = {t["Key"]: t["Value"] for t in inst["Tags"]}["tidegate:hostkey"]
        groups = instances.ec2.describe_security_groups(GroupIds=[g["GroupId"] for g in inst["SecurityGroups"]])
        rules = [p for g in groups["SecurityGroups"] for p in g["IpPermissions"]]
        assert [(p["IpProtocol"], p["FromPort"], p["ToPort"], [r["CidrIp"] for r in p["IpRanges"]]) for p in rules] == [
            ("tcp", 22, 22, ["127.0.0.1/32"])
        ]
    else:
        vm = next(
            r for k, r in instances.arm.resources.items()
            if "/virtualmachines/" in k and r["tags"]["tidegate:replica"] == replica_id
        )  # fmt: skip
        host_key = vm["tags"]["tidegate:hostkey"]
        nsg = next(r for k, r in instances.arm.resources.items() if k.endswith(f"/{replica_id}-nsg".lower()))
        allowed = [
            (r["properties"]["destinationPortRange"], r["properties"]["sourceAddressPrefix"])
            for r in nsg["properties"]["securityRules"]
            if r["properties"]["access"] == "Allow"
        ]
        assert allowed == [("22", "127.0.0.1/32")]
    tunnels = backend.tunnels  # type: ignore[attr-defined]
    check_tunnel_user_data(
        instances.user_data(replica_id),
        client_public=tunnels.keys.client_public(),
        pinned_host_key=host_key,
        service_port=instances.service_port,
        user="nobody",
    )


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


@pytest.mark.slow
@pytest.mark.parametrize(
    "make", [pytest.param(aws_backend, id="aws"), pytest.param(azure_backend, id="azure")]
)
def test_cloud_service_is_provisioned_probed_routed_scaled_and_torn_down(
    make: Callable[..., Backend],
    tmp_path: Path,
    replica_server: int,
    moto_url: str,
    linux_ami: str,
    arm: FakeArm,
    instances: Instances,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state = tmp_path / "state"
    owner = StateStore(state).installation().id
    instances.service_port = replica_server
    backend = make(owner, moto_url, linux_ami, arm, tunnels_for(state, instances.kind, instances))
    for name, value in RECONCILER_ONLY.items():
        monkeypatch.setenv(name, value)
    # The reconciler's whole environment is where bare-KEY values come from; only the declared
    # HF_TOKEN may leave with the replica.
    engine = Engine(
        state,
        BackendRegistry({backend.name: backend}),
        EngineSettings(env={**RECONCILER_ONLY, "HF_TOKEN": "hf-secret-xyz"}, drain_min=0.0, probe_timeout=2.0),
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
        (owned,) = backend.list_owned()
        # Routed to the tunnel's unix socket, never to http://<instance ip>:<port>.
        assert url == backend.tunnels.address(owned.replica_id), engine.status()  # type: ignore[attr-defined]
        assert probe_replica(url, None).ready
        assert owned.offer is not None and owned.offer.gpu is not None and owned.offer.gpu.name == "T4"
        check_exposure(instances.kind, backend, instances, owned.replica_id)
        first_socket = backend.tunnels.socket(owned.replica_id)  # type: ignore[attr-defined]
        assert first_socket.exists()
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
        gone = Snapshot("2" * 40, repo)
        engine.reconcile(gone)  # first out of the routes, the replica still running (it drains)
        assert "llm" not in {n for n, r in json.loads((state / "routes.json").read_text())["services"].items() if not r.get("withdrawn")}
        assert [r.replica_id for r in backend.list_owned()] == [owned.replica_id]
        converge(engine, gone, lambda: not backend.list_owned())  # then stopped once drained
        assert [r.replica_id for r in backend.list_owned()] == [], "removing the file tears the replica down"
        assert backend.tunnels._manager.replica_ids() == []  # type: ignore[attr-defined]
        assert not first_socket.exists(), "the socket went with its replica"
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
from backends.cloud.tunnels import CloudTunnels
from backends.cloud.catalog import load_catalog
from backends.settings import AwsSettings, AzureSettings
from reconciler.engine.reconcile import Engine, EngineSettings, Snapshot
from reconciler.state.store import StateStore

class Token:
    def get_token(self, *scopes, **kwargs):
        return AccessToken("fake-arm-token", 4_102_444_800)

kind, raw, state, repo = sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
owner = StateStore(state).installation().id
tunnels = CloudTunnels(state, kind)  # killed right after create: no tunnel gets opened
if kind == "aws":
    backend = AwsBackend(AwsSettings(**raw), owner, catalog=load_catalog(), tunnels=tunnels)
else:
    backend = AzureBackend(AzureSettings(**raw), owner, catalog=load_catalog(), credential=Token(), tunnels=tunnels)
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
    make: Callable[..., Backend],
    tmp_path: Path,
    replica_server: int,
    moto_url: str,
    linux_ami: str,
    arm: FakeArm,
    instances: Instances,
) -> None:
    import json
    import os
    import subprocess
    import sys

    state, repo = tmp_path / "state", tmp_path / "repo"
    repo.mkdir()
    owner = StateStore(state).installation().id
    instances.service_port = replica_server
    backend = make(owner, moto_url, linux_ami, arm, tunnels_for(state, instances.kind, instances))
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
        assert route and route.upstreams, "the adopted replica is reached through its tunnel"
        [rec] = engine.doc.services.values()
        assert [r.id for r in rec.replicas] == [owned[0].replica_id]
    finally:
        engine.close()
        for info in backend.list_owned():
            backend.delete(info.replica_id)
