"""The gateway <-> cloud replica tunnel against a real OpenSSH server on loopback.

Each test renders a replica's user data with the real code, starts /usr/sbin/sshd configured from
the key material and sshd drop-in read back out of that user data (tests/support/sshd.py), puts a
plain HTTP server on 127.0.0.1 behind it as the replica's service, and talks through the tunnel's
unix socket with the reconciler's own readiness probe. Attacks: an impostor sshd with another host
key, a client key that is not the installation's, forwarding to any other destination than the
service port, a shell; and the tunnel must come back by itself after sshd restarts.
"""

from __future__ import annotations

import asyncio
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import httpx
import pytest

from backends.cloud.ssh_tunnel import open_ssh
from backends.cloud.tunnels import Backoff, CloudTunnels, socket_path
from reconciler.engine.probe import probe_replica
from tests.support.hello_server import hello_server
from tests.support.sshd import FakeInstance, require_sshd


@pytest.fixture
def services() -> Iterator[tuple[int, int]]:
    """The replica's service port, and another local port the tunnel must not reach."""
    with hello_server("hello from {port}") as a, hello_server("hello from {port}") as b:
        yield a, b


def _tunnels(state: Path) -> CloudTunnels:
    return CloudTunnels(state, "aws", active=True, backoff=Backoff(0.05, 0.5), connect_timeout=3.0)


@pytest.fixture
def tunnels(tmp_path: Path) -> Iterator[CloudTunnels]:
    require_sshd()
    t = _tunnels(tmp_path / "state")
    try:
        yield t
    finally:
        t.shutdown()


@pytest.fixture
def instance(tunnels: CloudTunnels, services: tuple[int, int], tmp_path: Path) -> Iterator[FakeInstance]:
    inst = FakeInstance(tunnels, services[0], tmp_path / "instance")
    try:
        yield inst
    finally:
        inst.sshd.close()


def get(tunnels: CloudTunnels, replica_id: str, path: str = "/") -> httpx.Response:
    transport = httpx.HTTPTransport(uds=str(tunnels.socket(replica_id)))
    with httpx.Client(transport=transport, timeout=10) as client:
        return client.get("http://replica" + path)


def client_key(tunnels: CloudTunnels) -> asyncssh.SSHKey:
    return asyncssh.import_private_key(tunnels.keys.client_private_openssh())


def wait_until(check: Any, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_request_goes_through_the_tunnel_and_the_socket_is_private(
    tunnels: CloudTunnels, instance: FakeInstance, services: tuple[int, int]
) -> None:
    target = instance.target()
    tunnels.open(target)
    address = tunnels.address(target.replica_id)
    assert address.startswith("unix://")
    r = get(tunnels, target.replica_id, "/v1/models")
    assert r.status_code == 200 and r.text == f"hello from {services[0]} /v1/models"
    # The readiness / liveness probe goes the same way.
    assert probe_replica(address, None).ready
    sock = tunnels.socket(target.replica_id)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
    # sshd saw the forward-only user authenticate with the installation's key.
    assert "Accepted publickey for nobody" in instance.sshd.log_text()
    status = tunnels.status(target.replica_id)
    assert status is not None and status.connected


def test_an_impostor_with_another_host_key_is_refused(
    tunnels: CloudTunnels, services: tuple[int, int], tmp_path: Path
) -> None:
    # The impostor holds a valid-looking setup (even our authorized key) but not the host key
    # tidegate generated for this launch: the tunnel pins that one.
    real = tunnels.endpoint("test:real", services[0], 22, "nobody")
    impostor = FakeInstance(tunnels, services[0], tmp_path / "impostor", label="test:impostor")
    try:
        assert impostor.endpoint.host_key.public != real.host_key.public
        target = impostor.target(host_key=real.host_key.public)
        with pytest.raises(asyncssh.HostKeyNotVerifiable):
            asyncio.run(open_ssh(target, client_key(tunnels), timeout=5))
        tunnels.open(target)
        with pytest.raises(httpx.TransportError):
            get(tunnels, target.replica_id)
        status = tunnels.status(target.replica_id)
        assert status is not None and not status.connected and status.failures >= 1
        assert "HostKeyNotVerifiable" in (status.last_error or "")
        # The client never authenticated: sshd never saw our key.
        assert "Accepted publickey" not in impostor.sshd.log_text()
    finally:
        impostor.sshd.close()


def test_a_client_key_other_than_the_installations_is_refused(
    instance: FakeInstance, tmp_path: Path
) -> None:
    other = _tunnels(tmp_path / "other-installation")
    try:
        with pytest.raises(asyncssh.PermissionDenied):
            asyncio.run(open_ssh(instance.target(), client_key(other), timeout=5))
        other.open(instance.target())
        with pytest.raises(httpx.TransportError):
            get(other, instance.spec.replica_id)
        assert "Accepted publickey" not in instance.sshd.log_text()
    finally:
        other.shutdown()


def test_forwarding_anywhere_but_the_service_port_is_refused_by_sshd(
    tunnels: CloudTunnels, instance: FakeInstance, services: tuple[int, int]
) -> None:
    service, other = services

    async def attempts() -> dict[str, str]:
        conn = await open_ssh(instance.target(), client_key(tunnels), timeout=5)
        out: dict[str, str] = {}
        async with conn:
            for name, host, port in [
                ("service", "127.0.0.1", service),
                ("other port", "127.0.0.1", other),
                ("sshd itself", "127.0.0.1", instance.sshd.port),
                ("same port, other name", "localhost", service),
            ]:
                try:
                    reader, writer = await conn.open_connection(host, port)
                    writer.write(b"GET /x HTTP/1.0\r\n\r\n")
                    out[name] = (await reader.read()).decode(errors="replace")
                except asyncssh.ChannelOpenError as e:
                    out[name] = f"refused: {e.reason}"
            try:
                await conn.open_unix_connection("/run/sshd.pid")
                out["unix socket"] = "opened"
            except asyncssh.ChannelOpenError as e:
                out["unix socket"] = f"refused: {e.reason}"
            result = await conn.run("id", check=False)
            out["shell"] = f"exit {result.exit_status}: {result.stdout!r}"
        return out

    out = asyncio.run(attempts())
    assert f"hello from {service} /x" in out["service"]
    for name in ("other port", "sshd itself", "same port, other name", "unix socket"):
        assert out[name].startswith("refused"), (name, out[name])
    assert "uid=" not in out["shell"] and not out["shell"].startswith("exit 0"), out["shell"]


@pytest.mark.slow
def test_the_tunnel_reconnects_after_sshd_restarts(
    tunnels: CloudTunnels, instance: FakeInstance, services: tuple[int, int]
) -> None:
    target = instance.target()
    tunnels.open(target)
    assert get(tunnels, target.replica_id).status_code == 200
    instance.sshd.stop()

    def down() -> bool:
        st = tunnels.status(target.replica_id)
        return st is not None and not st.connected

    wait_until(down, "the tunnel to notice sshd went away")
    with pytest.raises(httpx.TransportError):
        get(tunnels, target.replica_id)
    instance.sshd.start()  # same port, same host key: the instance came back

    def answers() -> bool:
        try:
            return get(tunnels, target.replica_id).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(answers, "the tunnel to reconnect")
    st = tunnels.status(target.replica_id)
    assert st is not None and st.connected and st.failures == 0


def test_a_tunnel_closes_with_its_replica_and_reopens_when_the_target_moves(
    tunnels: CloudTunnels, instance: FakeInstance, services: tuple[int, int]
) -> None:
    target = instance.target()
    tunnels.open(target)
    sock = tunnels.socket(target.replica_id)
    assert get(tunnels, target.replica_id).status_code == 200
    tunnels.retain([target.replica_id])  # still listed: kept
    assert sock.exists()
    tunnels.retain([])  # no longer listed as running: closed, socket gone
    assert not sock.exists() and tunnels.status(target.replica_id) is None
    tunnels.open(target)
    assert get(tunnels, target.replica_id).status_code == 200
    tunnels.open(target)  # the same target again: the same tunnel, no reconnect
    moved = instance.target(port=1)  # the replica's address changed (a new instance): reopened
    tunnels.open(moved)
    wait_until(lambda: (tunnels.status(target.replica_id) or moved).failures >= 1, "a failed attempt")  # type: ignore[union-attr]
    tunnels.close(target.replica_id)
    assert not sock.exists()


def test_a_long_state_dir_gets_a_short_private_socket_path(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 90)
    path = socket_path(deep, "llm-abcdef12-0")
    assert len(str(path)) <= 100 and path.name.endswith(".sock")
    assert socket_path(deep, "llm-abcdef12-1") != path
    assert socket_path(tmp_path, "x-1") == tmp_path / "x-1.sock"
