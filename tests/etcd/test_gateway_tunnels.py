"""`tidegate gateway --state etcd://…` on another machine than the leader reaches a cloud replica
through its own SSH tunnel (reconciler.cli.gateway_tunnels).

The routes on a real 3-member etcd name the leader's tunnel socket (a path on the leader's
machine) and the tunnel's public facts; the "instance" is a real sshd on loopback configured from
the replica's user data (tests/support/sshd.py) in front of a small HTTP server. A gateway process
with the installation's key folder copied into its --local-state serves a request through its own
tunnel; one without keys stays up, logs the problem once per replica and answers /healthz
"degraded" naming the folder.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from backends.cloud.tunnels import CloudTunnels
from reconciler.cli import tunnel_keys
from reconciler.state.etcd_store import EtcdStore
from tests.etcd.gateways import GatewayProc
from tests.support.etcd_cluster import EtcdCluster
from tests.support.hello_server import hello_server
from tests.support.sshd import FakeInstance, require_sshd
from tidegate.etcd import EtcdClient, EtcdLocation
from tidegate.routes import RoutesSnapshot, ServiceRoute, TunnelRoute, Upstream

pytestmark = pytest.mark.slow  # two gateway processes, an sshd, etcd: ~15 s on 2 busy cores


def wait_until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def service_port() -> Iterator[int]:
    with hello_server("hello from the instance") as port:
        yield port


def publish(url: str, serial: int, upstream: Upstream) -> None:
    route = ServiceRoute(name="llm", host="llm.localhost", auth=False, upstreams=(upstream,))
    snapshot = RoutesSnapshot(serial=serial, domain="localhost", services={"llm": route})
    EtcdStore(EtcdClient(EtcdLocation.parse(url))).put("routes.json", snapshot.model_dump_json().encode())


def test_a_remote_gateway_serves_a_cloud_replica_through_its_own_tunnel_and_one_without_keys_degrades(
    etcd_cluster: EtcdCluster, service_port: int, tmp_path: Path
) -> None:
    require_sshd()
    url = etcd_cluster.url()
    location = EtcdLocation.parse(url)
    leader = tmp_path / "leader"
    tunnel_keys.check(EtcdClient(location), location, leader / "ssh", lead=True)
    instance = FakeInstance(CloudTunnels(leader, "aws"), service_port, tmp_path / "instance")
    gws: list[GatewayProc] = []
    try:
        t = instance.target()
        leader_socket = f"unix://{leader}/run/tunnels/aws/{t.replica_id}.sock"  # not on this "machine"
        upstream = Upstream(
            replica_id=t.replica_id, url=leader_socket,
            tunnel=TunnelRoute(backend="aws", host=t.host, port=t.port, user=t.user, host_key=t.host_key,
                               service_port=t.service_port),
        )  # fmt: skip
        publish(url, 1, upstream)

        # Machine 2: the operator copied the key folder into its --local-state.
        local2 = tmp_path / "m2"
        (local2 / "ssh").mkdir(parents=True, mode=0o700)
        shutil.copy2(leader / "ssh" / "id_ed25519", local2 / "ssh" / "id_ed25519")
        gw = GatewayProc(url, local2, tmp_path / "gw2.log")
        gws.append(gw)
        gw.wait_ready()
        wait_until(lambda: gw.health().get("routes_serial") == 1, "routes on machine 2")
        r = httpx.get(f"{gw.base}/v1/x?y=1", headers={"Host": "llm.localhost"}, timeout=10)
        assert r.status_code == 200, r.text
        assert r.text == "hello from the instance /v1/x?y=1"
        assert gw.health()["status"] == "ok"
        served = json.loads((local2 / "routes.json").read_text())["services"]["llm"]["upstreams"][0]
        assert served["url"] != leader_socket and served["url"].startswith("unix://")
        assert "Accepted publickey for nobody" in instance.sshd.log_text()

        # Machine 3: no key material. It keeps running, says so once per replica, and is degraded.
        local3 = tmp_path / "m3"
        bare = GatewayProc(url, local3, tmp_path / "gw3.log")
        gws.append(bare)
        bare.wait_ready()
        wait_until(lambda: bare.health().get("status") == "degraded", "machine 3 degraded")
        health = bare.health()
        assert str(local3 / "ssh") in health["error"] and "--tunnel-keys" in health["error"]
        r = httpx.get(f"{bare.base}/v1/x", headers={"Host": "llm.localhost"}, timeout=10)
        assert r.status_code == 503, r.text
        publish(url, 2, upstream)  # the same replica again: no second log line for it
        wait_until(lambda: bare.health().get("routes_serial") == 2, "routes serial 2 on machine 3")
        assert bare.proc.poll() is None
        log = (tmp_path / "gw3.log").read_text()
        assert log.count(f"cloud replica {t.replica_id} left out of this gateway's routes") == 1, log
        assert "Traceback" not in log
        assert not (local3 / "ssh").exists()  # nothing generated in its place
    finally:
        for g in gws:
            g.close()
        instance.sshd.close()
