"""The etcd-fed gateway's routes rewrite (reconciler.cli.gateway_tunnels), in process: real key
files, real tunnel sockets (the SSH side keeps retrying an unreachable port in the background; the
full path through a real sshd is tests/etcd/test_gateway_tunnels.py)."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.cloud.tunnels import Backoff, CloudTunnels, ssh_fingerprint
from reconciler.cli.gateway_tunnels import GatewayTunnels
from tests.support.sshd import free_port
from tidegate.routes import RoutesSnapshot, ServiceRoute, TunnelRoute, Upstream


def routes(*upstreams: Upstream) -> bytes:
    route = ServiceRoute(name="llm", host="llm.localhost", upstreams=upstreams)
    return RoutesSnapshot(serial=3, services={"llm": route}).model_dump_json().encode()


def cloud(replica_id: str, host_key: str) -> Upstream:
    tunnel = TunnelRoute(backend="aws", host="127.0.0.1", port=free_port(), user="tidegate-tunnel",
                         host_key=host_key, service_port=8000)  # fmt: skip
    return Upstream(replica_id=replica_id, url=f"unix:///leader/run/tunnels/aws/{replica_id}.sock", tunnel=tunnel)


def served(body: bytes) -> list[dict[str, object]]:
    ups: list[dict[str, object]] = json.loads(body)["services"]["llm"]["upstreams"]
    return ups


@pytest.fixture
def installation(tmp_path: Path) -> Iterator[CloudTunnels]:
    leader = CloudTunnels(tmp_path / "leader", "aws")
    leader.keys.ensure()
    yield leader


def test_with_the_installation_key_each_cloud_upstream_gets_a_local_socket(
    installation: CloudTunnels, tmp_path: Path
) -> None:
    local = tmp_path / "m2"
    (local / "ssh").mkdir(parents=True, mode=0o700)
    shutil.copy2(installation.keys.client_key_path, local / "ssh" / "id_ed25519")
    host_key = installation.endpoint("aws:x", 8000, 22, "tidegate-tunnel").host_key.public
    rewrite = GatewayTunnels(
        local, local / "ssh", expected_client=ssh_fingerprint(installation.keys.client_public()),
        backoff=Backoff(0.5, 1.0), connect_timeout=1.0,
    )  # fmt: skip
    try:
        plain = Upstream(replica_id="web-1", url="http://127.0.0.1:9")
        body, problem = rewrite(routes(plain, cloud("llm-a-0", host_key)))
        assert problem is None
        first, second = served(body)
        assert first["url"] == "http://127.0.0.1:9"  # not a cloud replica: untouched
        url = str(second["url"])
        assert url.startswith("unix://") and "/leader/" not in url
        assert Path(url.removeprefix("unix://")).is_socket()
        assert json.loads(body)["serial"] == 3
        # The replica leaves the routes: its tunnel and socket go with it.
        body, problem = rewrite(routes(plain))
        assert problem is None and not Path(url.removeprefix("unix://")).exists()
    finally:
        rewrite.shutdown()


def test_another_key_or_none_leaves_cloud_upstreams_out_says_why_once(
    installation: CloudTunnels, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    expected = ssh_fingerprint(installation.keys.client_public())
    host_key = installation.endpoint("aws:x", 8000, 22, "tidegate-tunnel").host_key.public
    other = tmp_path / "m3"
    CloudTunnels(other, "aws").keys.ensure()  # its own key, not the installation's
    for local, says in ((other, "is not the installation's"), (tmp_path / "m4", "no tunnel key in")):
        rewrite = GatewayTunnels(local, local / "ssh", expected_client=expected)
        try:
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="tidegate.gateway.tunnels"):
                for _ in range(3):
                    body, problem = rewrite(routes(cloud("llm-a-0", host_key), cloud("llm-a-1", host_key)))
                    assert problem is not None and says in problem and str(local / "ssh") in problem
                    assert served(body) == []
            logged = [r.getMessage() for r in caplog.records]
            assert len(logged) == 2 and all(says in line for line in logged)  # once per replica
        finally:
            rewrite.shutdown()
    assert not (tmp_path / "m4" / "ssh").exists()
