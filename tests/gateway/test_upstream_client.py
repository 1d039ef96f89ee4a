"""gateway.upstream.client against a scripted raw-socket replica: framing, pooling, streaming, failures."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.upstream.client import ConnectFailed, HostPool, UpstreamClient, UpstreamError

# A scripted answer: bytes to write, "pause" (wait for the test's gate), or "close".
Script = list[Any]


class Replica:
    """Answers the n-th request with scripts[n] (the last one repeats); records requests and connections."""

    def __init__(self, *scripts: Script) -> None:
        self.scripts = scripts
        self.requests: list[bytes] = []
        self.connections = 0
        self.gate = asyncio.Event()
        self.server: asyncio.AbstractServer | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                body = await reader.readexactly(int(m.group(1))) if m else b""
                self.requests.append(head + body)
                script = self.scripts[min(len(self.requests), len(self.scripts)) - 1]
                for step in script:
                    if step == "pause":
                        await self.gate.wait()
                    elif step == "close":
                        writer.close()
                        return
                    else:
                        writer.write(step)
                        await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def start_tcp(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def start_unix(self, path: Path) -> str:
        self.server = await asyncio.start_unix_server(self.handle, str(path))
        return f"unix://{path}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.close()


def run(replica: Replica, body: Callable[[HostPool], Awaitable[None]], read_timeout: float = 5.0) -> None:
    async def main() -> None:
        url = await replica.start_tcp()
        client = UpstreamClient(2.0, read_timeout)
        try:
            await body(client.pool(url))
        finally:
            client.close()
            replica.stop()

    asyncio.run(main())


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello"


@pytest.mark.parametrize(
    ("script", "body", "pooled"),
    [
        pytest.param([OK], b"hello", True, id="content-length"),
        pytest.param(
            [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n", b"2\r\nlo\r\n0\r\n\r\n"], b"hello", True,
            id="chunked",
        ),
        pytest.param([b"HTTP/1.1 200 OK\r\n\r\nhel", b"lo", "close"], b"hello", False, id="until-close"),
        pytest.param([b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello"], b"hello", False, id="connection-close"),
        pytest.param([b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello"], b"hello", False, id="http-1.0"),
        pytest.param([b"HTTP/1.1 204 No Content\r\n\r\n"], b"", True, id="no-content"),
        pytest.param([b"HTTP/1.1 100 Continue\r\n\r\n", OK], b"hello", True, id="interim-100"),
    ],
)
def test_response_framing_and_reuse(script: Script, body: bytes, pooled: bool) -> None:
    replica = Replica(script)

    async def go(pool: HostPool) -> None:
        resp = await pool.request(b"POST", b"/v1/x?y=1", b"x-app: v\r\n", b'{"a":1}')
        assert await resp.read() == body
        resp.release()
        assert pool.idle_count == (1 if pooled else 0)
        again = await pool.request(b"GET", b"/", b"", None)
        await again.read()
        again.release()
        assert replica.connections == (1 if pooled else 2)

    run(replica, go)
    first = replica.requests[0]
    assert first.startswith(b"POST /v1/x?y=1 HTTP/1.1\r\nhost: 127.0.0.1:")
    assert b"\r\nx-app: v\r\ncontent-length: 7\r\n\r\n" in first and first.endswith(b'{"a":1}')
    assert b"content-length" not in replica.requests[1]  # no body, no length


def test_headers_lowercased_and_streamed_chunk_by_chunk() -> None:
    replica = Replica([b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
                       b"d\r\ndata: first\n\n\r\n", "pause", b"c\r\ndata: last\n\n\r\n0\r\n\r\n"])

    async def go(pool: HostPool) -> None:
        resp = await pool.request(b"GET", b"/sse", b"", None)
        assert resp.status == 200 and (b"content-type", b"text/event-stream") in resp.headers
        assert resp.content_length is None
        assert await resp.read_chunk() == b"data: first\n\n"  # before the replica sends the rest
        assert not resp.at_eof
        replica.gate.set()
        assert await resp.read() == b"data: last\n\n"
        assert resp.at_eof
        resp.release()
        assert pool.idle_count == 1

    run(replica, go)


def test_partly_read_response_is_not_pooled() -> None:
    replica = Replica([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", "pause", b"world"])

    async def go(pool: HostPool) -> None:
        resp = await pool.request(b"GET", b"/", b"", None)
        assert await resp.read_chunk() == b"hello"
        resp.release()
        assert pool.idle_count == 0
        replica.gate.set()

    run(replica, go)


def test_read_timeout_closes_the_connection() -> None:
    replica = Replica(["pause"])

    async def go(pool: HostPool) -> None:
        with pytest.raises(TimeoutError):
            await pool.request(b"GET", b"/", b"", None)
        assert pool.idle_count == 0
        replica.gate.set()

    run(replica, go, read_timeout=0.2)


@pytest.mark.parametrize(
    ("script", "message"),
    [
        pytest.param([b"garbage\r\n\r\n"], "bad response", id="not-http"),
        pytest.param([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhel", "close"], "mid-response", id="cut-body"),
        pytest.param(["close"], "before answering", id="closed-unanswered"),
    ],
)
def test_broken_answers_raise_upstream_error(script: Script, message: str) -> None:
    replica = Replica(script)

    async def go(pool: HostPool) -> None:
        with pytest.raises(UpstreamError, match=message):
            resp = await pool.request(b"GET", b"/", b"", None)
            await resp.read()
        assert pool.idle_count == 0

    run(replica, go)


@pytest.mark.parametrize(
    ("method", "retried"),
    [pytest.param(b"GET", True, id="idempotent-retried"), pytest.param(b"POST", False, id="post-not-retried")],
)
def test_pooled_connection_closed_under_a_request(method: bytes, retried: bool) -> None:
    replica = Replica([OK], ["close"], [OK])  # the 2nd request finds its kept connection closing

    async def go(pool: HostPool) -> None:
        resp = await pool.request(b"GET", b"/", b"", None)
        await resp.read()
        resp.release()
        if retried:
            again = await pool.request(method, b"/", b"", b"")
            assert await again.read() == b"hello"
            again.release()
        else:
            with pytest.raises(UpstreamError):
                await pool.request(method, b"/", b"", b"")

    run(replica, go)
    assert replica.connections == (2 if retried else 1)


def test_kept_connection_closed_by_the_replica_is_not_reused() -> None:
    replica = Replica([OK, "close"])  # answers, then closes while the connection idles in the pool

    async def go(pool: HostPool) -> None:
        resp = await pool.request(b"GET", b"/", b"", None)
        await resp.read()
        resp.release()
        for _ in range(50):
            if pool.idle_count == 0:
                break
            await asyncio.sleep(0.01)
        assert pool.idle_count == 0
        again = await pool.request(b"POST", b"/", b"", b"x")  # a POST: only safe on a fresh connection
        assert await again.read() == b"hello"
        again.release()

    run(replica, go)
    assert replica.connections == 2


def test_unix_socket_and_connect_failures(tmp_path: Path) -> None:
    async def main() -> None:
        replica = Replica([OK])
        url = await replica.start_unix(tmp_path / "r.sock")
        client = UpstreamClient(2.0, 5.0)
        try:
            resp = await client.pool(url).request(b"GET", b"/", b"", None)
            assert await resp.read() == b"hello"
            resp.release()
            assert replica.requests[0].startswith(b"GET / HTTP/1.1\r\nhost: localhost\r\n")
            for dead in ("unix:///nonexistent/tidegate.sock", "http://127.0.0.1:9"):
                with pytest.raises(ConnectFailed):
                    await client.pool(dead).request(b"GET", b"/", b"", None)
            assert client.pool(url).idle_count == 1
            client.prune(set())  # no longer routed: its idle connections are closed
            assert client.pool(url).idle_count == 0
        finally:
            client.close()
            replica.stop()

    asyncio.run(main())


def test_stale_retry_takes_a_fresh_connection_not_another_pooled_one() -> None:
    # Two kept connections; the third request finds one closing. Were the retry to take the other
    # kept connection, the replica would see two connections, not three.
    replica = Replica(["pause", OK], [OK], ["close"], [OK])

    async def go(pool: HostPool) -> None:
        first = asyncio.ensure_future(pool.request(b"GET", b"/", b"", None))
        await asyncio.sleep(0.05)
        second = await pool.request(b"GET", b"/", b"", None)  # a second connection (the first is busy)
        assert await second.read() == b"hello"
        replica.gate.set()
        resp = await first
        assert await resp.read() == b"hello"
        resp.release()
        second.release()
        assert pool.idle_count == 2
        again = await pool.request(b"GET", b"/", b"", None)  # the newest idle one is stale: retried once
        assert await again.read() == b"hello"
        again.release()

    run(replica, go)
    assert replica.connections == 3  # the retry opened a new connection instead of trying the other idle one


def test_idle_connections_are_reaped(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.upstream import client as upstream_client

    monkeypatch.setattr(upstream_client, "KEEPALIVE", 0.2)
    replica = Replica([OK])

    async def go(pool: HostPool) -> None:
        resp = await pool.request(b"GET", b"/", b"", None)
        await resp.read()
        resp.release()
        assert pool.idle_count == 1
        await asyncio.sleep(0.5)  # no request meanwhile: only the reaper can close it
        assert pool.idle_count == 0

    run(replica, go)


def test_first_byte_and_between_chunk_timeouts_are_separate() -> None:
    replica = Replica([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n", "pause", b"1\r\nb\r\n0\r\n\r\n"])

    async def main() -> None:
        url = await replica.start_tcp()
        client = UpstreamClient(2.0, read_timeout=0.2, first_byte_timeout=5.0)
        try:
            resp = await client.pool(url).request(b"GET", b"/", b"", None)
            assert await resp.read_chunk() == b"a"
            with pytest.raises(TimeoutError, match="read"):
                await resp.read_chunk()
            resp.release()
        finally:
            replica.gate.set()
            client.close()
            replica.stop()

    asyncio.run(main())
