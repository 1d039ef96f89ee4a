"""Clients that misbehave against a real gateway: silent, slow, too many, too large, replaying,
hanging up; and a gateway process that must stop quickly when told to."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from gateway.access.auth import MetricsAccess, metrics_need_token
from gateway.upstream.relay import wire_close_code
from tests.gateway.aio_upstream import AioUpstream
from tests.gateway.conftest import ROOT, RunningGateway, snapshot_of, wait_for
from tests.gateway.raw_upstream import RawUpstream, wait_until
from tidegate.routes import RoutesSnapshot, ServiceRoute, Upstream
from tidegate.routes_io import write_snapshot
from tidegate.signals import drain_signals

MakeGateway = Callable[..., RunningGateway]
TokenFor = Callable[[RunningGateway], str]


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the gateway closes this connection within `seconds` (reading whatever it sends)."""
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_idle_and_slow_clients_are_closed_after_the_header_timeout(make_gateway: MakeGateway) -> None:
    gw = make_gateway(header_timeout=0.5)
    silent = socket.create_connection(("127.0.0.1", gw.port))
    slow = socket.create_connection(("127.0.0.1", gw.port))
    slow.sendall(b"GET /healthz HTTP/1.1\r\n")
    started = time.monotonic()
    for _ in range(4):  # a header line every 0.2 s never completes the head
        time.sleep(0.2)
        try:
            slow.sendall(b"X-Slow: 1\r\n")
        except OSError:
            break
    assert _closed_within(silent, 3.0) and _closed_within(slow, 3.0)
    assert time.monotonic() - started < 2.5
    with gw.client() as c:  # a kept-alive client is not bound by it between requests
        assert c.get("/healthz").status_code == 200
        time.sleep(0.8)
        assert c.get("/healthz").status_code == 200


def test_request_head_over_the_cap_is_431(make_gateway: MakeGateway) -> None:
    gw = make_gateway(max_header_bytes=16 * 1024)
    s = socket.create_connection(("127.0.0.1", gw.port))
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * 40_000 + b"\r\n")
    s.settimeout(5)
    assert s.recv(100).startswith(b"HTTP/1.1 431 ")
    with gw.client() as c:
        assert c.get("/healthz").status_code == 200


@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[Callable[..., tuple[subprocess.Popen[str], str, Path]]]:
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str, nofile: int | None = None, routes: tuple[ServiceRoute, ...] = ()) -> tuple[subprocess.Popen[str], str, Path]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        state = tmp_path / f"state{len(procs)}"
        write_snapshot(state, RoutesSnapshot(serial=1, services={r.name: r for r in routes}))

        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler.cli.main", "gateway", "--state", str(state), "--listen", f"127.0.0.1:{port}", *args],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=limit,
        )
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, "gateway process", timeout=60)
        return proc, url, state

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


@pytest.mark.slow
def test_a_flood_of_silent_connections_leaves_other_clients_served(gateway_process: Callable[..., tuple[subprocess.Popen[str], str, Path]]) -> None:
    # The process may open 200 files (like `ulimit -n 200`): 300 silent connections are more than it could hold.
    proc, url, _ = gateway_process("--header-timeout", "1", nofile=200)
    port = int(url.rsplit(":", 1)[1])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    with httpx.Client(base_url=url, timeout=5) as kept:
        assert kept.get("/healthz").status_code == 200  # a client that was there before the flood
        flood = [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
        try:
            assert kept.get("/healthz").status_code == 200  # still served during the flood
            refused = httpx.get(f"{url}/healthz", timeout=5)  # a newcomer: a clear 503, not a reset or a hang
            assert refused.status_code in (200, 503)
            # The silent ones are closed after the header timeout; then newcomers get in again.
            assert wait_until(lambda: httpx.get(f"{url}/healthz", timeout=5).status_code == 200, 10)
            assert kept.get("/healthz").status_code == 200
        finally:
            for s in flood:
                s.close()
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert "Traceback" not in err and "Too many open files" not in err, err[-2000:]


@pytest.mark.slow
def test_sigterm_with_a_hung_request_stops_within_the_grace(gateway_process: Callable[..., tuple[subprocess.Popen[str], str, Path]]) -> None:
    hung = RawUpstream({"hang": lambda ex: ex.hang_until_closed() or False}).start()
    try:
        route = ServiceRoute(name="hung", host="hung.localhost", auth=False, upstreams=(Upstream(replica_id="hung-0", url=hung.url),))
        proc, url, _ = gateway_process("--shutdown-grace", "1", routes=(route,))
        port = int(url.rsplit(":", 1)[1])
        client = socket.create_connection(("127.0.0.1", port))
        client.sendall(b"GET /hang HTTP/1.1\r\nHost: hung.localhost\r\n\r\n")
        assert wait_until(lambda: len(hung.requests) == 1)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
        assert time.monotonic() - started < 4.0
        assert wait_until(lambda: hung.closed_by_peer == 1, 2)  # the replica's connection closed too
        assert "Traceback" not in err, err[-2000:]
        client.close()
    finally:
        hung.stop()


def test_up_takes_the_gateway_options(tmp_path: Path) -> None:
    from reconciler.cli.main import build_parser
    from reconciler.cli.serving import GatewayThread
    from reconciler.cli.settings import build_settings

    args = build_parser().parse_args(
        ["up", "--state", str(tmp_path / "state"), "--listen", "127.0.0.1:0", "--read-timeout", "7",
         "--first-byte-timeout", "11", "--header-timeout", "3", "--max-connections", "50", "--metrics", "token", "--shutdown-grace", "1"]
    )
    settings = build_settings(args, environ={})
    assert settings.gateway_options == {
        "read_timeout": 7.0, "first_byte_timeout": 11.0, "header_timeout": 3.0, "max_connections": 50, "metrics": "token",
        "shutdown_grace": 1.0,
    }
    hung = RawUpstream({"hang": lambda ex: ex.hang_until_closed() or False}).start()
    thread = GatewayThread(settings)
    assert thread.start(), thread.error
    try:
        gw = thread.server.config.app.gateway
        assert (gw.settings.read_timeout, gw.settings.first_byte_timeout, gw.settings.max_connections) == (7.0, 11.0, 50)
        port = thread.server.servers[0].sockets[0].getsockname()[1]
        assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 401  # --metrics token
        route = ServiceRoute(name="hung", host="hung.localhost", auth=False, upstreams=(Upstream(replica_id="hung-0", url=hung.url),))
        write_snapshot(settings.state_dir, RoutesSnapshot(serial=2, services={"hung": route}))
        wait_for(lambda: gw.router.service("hung") is not None, "routes")
        client = socket.create_connection(("127.0.0.1", port))
        client.sendall(b"GET /hang HTTP/1.1\r\nHost: hung.localhost\r\n\r\n")
        assert wait_until(lambda: len(hung.requests) == 1)
    finally:
        started = time.monotonic()
        thread.stop()  # a request still hangs on its replica: cancelled after the 1 s grace
        assert time.monotonic() - started < 3.5
        assert not thread.thread or not thread.thread.is_alive()
        hung.stop()
    assert wait_until(lambda: hung.closed_by_peer == 1, 2)
    client.close()


@pytest.mark.parametrize(
    ("access", "host", "needed"),
    [
        pytest.param(MetricsAccess.AUTO, "127.0.0.1", False, id="auto-loopback"),
        pytest.param(MetricsAccess.AUTO, "::1", False, id="auto-loopback-v6"),
        pytest.param(MetricsAccess.AUTO, "localhost", False, id="auto-localhost"),
        pytest.param(MetricsAccess.AUTO, "0.0.0.0", True, id="auto-every-interface"),
        pytest.param(MetricsAccess.AUTO, "10.1.2.3", True, id="auto-private"),
        pytest.param(MetricsAccess.OPEN, "0.0.0.0", False, id="open"),
        pytest.param(MetricsAccess.TOKEN, "127.0.0.1", True, id="token"),
    ],
)
def test_metrics_access_rule(access: MetricsAccess, host: str, needed: bool) -> None:
    assert metrics_need_token(access, host) is needed


def test_metrics_token_setting(make_gateway: MakeGateway, token_for: TokenFor) -> None:
    open_gw = make_gateway()
    with open_gw.client() as c:
        assert c.get("/metrics").status_code == 200  # loopback listener: open by default
    locked = make_gateway(metrics="token")
    with locked.client() as c:
        r = c.get("/metrics")
        assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
        assert c.get("/metrics", headers={"Authorization": f"Bearer {token_for(locked)}"}).status_code == 200


def _signed(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def test_webhook_bad_input_is_4xx_with_one_line(make_gateway: MakeGateway, caplog: pytest.LogCaptureFixture) -> None:
    gw = make_gateway(webhook_secret="s3cret")
    with caplog.at_level(logging.INFO), gw.client() as c:
        big = c.post("/hooks/github", content=b"x" * (5 * 1024 * 1024 + 1), headers={"X-Hub-Signature-256": "sha256=00"})
        assert big.status_code == 413 and big.json()["error"]["code"] == "body_too_large"
        s = socket.create_connection(("127.0.0.1", gw.port))  # a raw 0xff byte in the header (httpx would refuse it)
        s.sendall(b"POST /hooks/github HTTP/1.1\r\nHost: x\r\nX-Hub-Signature-256: sha256=\xff\r\nContent-Length: 2\r\n\r\n{}")
        s.settimeout(5)
        head = s.recv(65536)
        assert head.startswith(b"HTTP/1.1 401 ") and b'"bad_signature"' in head
        s.close()
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_webhook_replay_is_ignored(make_gateway: MakeGateway) -> None:
    gw = make_gateway(webhook_secret="s3cret")
    body = json.dumps({"ref": "refs/heads/main", "after": "abc"}).encode()
    headers = {"X-Hub-Signature-256": _signed(b"s3cret", body), "X-GitHub-Event": "push", "X-GitHub-Delivery": "d-1"}
    with gw.client() as c:
        assert c.post("/hooks/github", content=body, headers=headers).status_code == 202
        again = c.post("/hooks/github", content=body, headers=headers)
        assert again.status_code == 200 and again.json() == {"status": "duplicate"}
        # The signature covers the body only: a new delivery id on the same body is still a replay.
        assert c.post("/hooks/github", content=body, headers={**headers, "X-GitHub-Delivery": "d-2"}).json() == {"status": "duplicate"}
        other = json.dumps({"ref": "refs/heads/main", "after": "def"}).encode()
        fresh = c.post("/hooks/github", content=other, headers={**headers, "X-Hub-Signature-256": _signed(b"s3cret", other), "X-GitHub-Delivery": "d-3"})
        assert fresh.status_code == 202
    assert len(drain_signals(gw.settings.state_dir)) == 2
    # Remembered across gateways sharing the state directory (other workers, or a restart).
    second = RunningGateway(gw.settings)
    second.start()
    try:
        with second.client() as c:
            assert c.post("/hooks/github", content=body, headers=headers).json() == {"status": "duplicate"}
    finally:
        second.stop()


def _ws_handshake(port: int, host: str, path: str = "/ws", token: str | None = None) -> tuple[socket.socket, bytes]:
    key = base64.b64encode(os.urandom(16))
    auth = b"Authorization: Bearer " + token.encode() + b"\r\n" if token else b""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + host.encode() + b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n" + auth + b"\r\n")
    s.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return s, data


def test_websocket_without_token_is_answered_like_http(make_gateway: MakeGateway, caplog: pytest.LogCaptureFixture) -> None:
    aio = AioUpstream().start()
    try:
        gw = make_gateway(access_log=True)
        gw.publish(snapshot_of(ServiceRoute(name="ws", host="ws.localhost", upstreams=(Upstream(replica_id="ws-0", url=aio.url),))))
        with caplog.at_level(logging.INFO, logger="tidegate.gateway.access"):
            s, data = _ws_handshake(gw.port, "ws.localhost")
            head, _, body = data.partition(b"\r\n\r\n")
            s.settimeout(2)
            while len(body) < 10 or not body.rstrip().endswith(b"}"):
                more = s.recv(65536)
                if not more:
                    break
                body += more
            s.close()
        assert head.startswith(b"HTTP/1.1 401 ")
        assert json.loads(body)["error"]["code"] == "missing_api_key"
        wait_for(lambda: [r for r in caplog.records if r.name == "tidegate.gateway.access"], "access line")
        line = json.loads(next(r for r in caplog.records if r.name == "tidegate.gateway.access").getMessage())
        assert line["status"] == 401
    finally:
        aio.stop()


def test_abrupt_websocket_disconnect_is_never_1006_on_the_wire(make_gateway: MakeGateway) -> None:
    seen: list[int | None] = []
    upstream = _RecordingWebSocket(seen).start()
    try:
        gw = make_gateway()
        gw.publish(snapshot_of(ServiceRoute(name="ws", host="ws.localhost", auth=False, upstreams=(Upstream(replica_id="ws-0", url=upstream.url),))))
        s, data = _ws_handshake(gw.port, "ws.localhost")
        assert data.startswith(b"HTTP/1.1 101 ")
        s.close()  # no Close frame: uvicorn reports 1006 to the app
        assert wait_until(lambda: bool(seen), 5)
        assert seen == [1001]
    finally:
        upstream.stop()


@pytest.mark.parametrize(
    ("code", "fallback", "sent"),
    [
        pytest.param(1000, 1001, 1000, id="normal"),
        pytest.param(1006, 1001, 1001, id="abnormal-never-sent"),
        pytest.param(1005, 1011, 1011, id="no-status-never-sent"),
        pytest.param(1015, 1011, 1011, id="tls-never-sent"),
        pytest.param(4001, 1011, 4001, id="application"),
        pytest.param(None, 1001, 1001, id="none"),
        pytest.param(True, 1001, 1001, id="not-a-number"),
    ],
)
def test_wire_close_code(code: object, fallback: int, sent: int) -> None:
    assert wire_close_code(code, fallback) == sent


class _RecordingWebSocket:
    """An aiohttp WebSocket upstream recording the close code each connection ends with."""

    def __init__(self, seen: list[int | None]) -> None:
        import asyncio
        import threading

        from aiohttp import web

        self.seen = seen
        self.loop = asyncio.new_event_loop()
        self.web = web
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    async def handler(self, request: object) -> object:
        ws = self.web.WebSocketResponse()
        await ws.prepare(request)  # type: ignore[arg-type]
        async for _ in ws:
            pass
        self.seen.append(ws.close_code)
        return ws

    def _run(self) -> None:
        import asyncio

        asyncio.set_event_loop(self.loop)
        app = self.web.Application()
        app.router.add_get("/ws", self.handler)
        self.runner = self.web.AppRunner(app, access_log=None)
        self.loop.run_until_complete(self.runner.setup())
        site = self.web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.ready.set()
        self.loop.run_forever()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> _RecordingWebSocket:
        self.thread.start()
        self.ready.wait(10)
        return self

    def stop(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)



def test_client_hanging_up_mid_body_is_not_an_error(make_gateway: MakeGateway, token_for: TokenFor, caplog: pytest.LogCaptureFixture) -> None:
    gw = make_gateway()
    token = token_for(gw).encode()
    with caplog.at_level(logging.INFO):
        for path in (b"/v1/chat/completions", b"/hooks/git"):
            s = socket.create_connection(("127.0.0.1", gw.port))
            s.sendall(b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token + b"\r\nContent-Length: 100\r\n\r\n{\"model\"")
            time.sleep(0.2)
            s.close()
        time.sleep(0.3)
        with gw.client() as c:
            assert c.get("/healthz").status_code == 200
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
