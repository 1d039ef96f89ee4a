"""A small HTTP/1.1 client to replicas: keep-alive pools on asyncio protocols + httptools' parser.

Issue 4 measured aiohttp's client at 150-200 us of CPU per proxied request, most of the gateway's
budget; this client does only what a reverse proxy needs, at a fraction of that:

- One `HostPool` per upstream URL (`http://host:port`, `https://...`, `unix:///abs/path.sock`) keeps idle
  connections (last used first). A pooled connection is checked for closure by flags the protocol
  keeps (EOF / connection lost seen, transport closing), never by probing, and dropped once idle
  for `KEEPALIVE` s: uvicorn (vLLM's server) closes idle connections after 5 s, and a POST sent on
  a connection the replica just closed cannot be retried safely.
- The request goes out in one write with a Content-Length body (the gateway has read the whole
  body already). The response is parsed by httptools: Content-Length, chunked, or until close.
- The body is handed to the caller chunk by chunk as it arrives (SSE), with reading paused while
  more than `HIGH_WATER` bytes wait for a slow client.
- Only a connection whose response was read to its end, that both sides keep alive, goes back to
  the pool; anything else (error, timeout, early release, HEAD, `Connection: close`) is closed.
- Failures: `ConnectFailed` (nothing was sent: refused, no such socket), `TimeoutError` (connect,
  or a read silent for `read_timeout` s; 0 means no limit), `UpstreamError` (anything else). Read
  timeouts are enforced by one sweep per pool every `read_timeout / 4` s (at most 1 s) over the
  responses being waited for, not a timer per read (uvloop's call_later + cancel costs ~8 us). A
  reused connection found closed before any response byte is retried once on a new connection for
  idempotent methods only.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
from typing import Any

import httptools

KEEPALIVE = 4.0
MAX_IDLE = 512  # idle connections kept per upstream
HIGH_WATER = 256 * 1024
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})


class UpstreamError(Exception):
    """The replica broke the exchange (bad bytes, closed mid-response)."""


class ConnectFailed(UpstreamError):
    """No connection could be made; nothing was sent."""


class _Stale(UpstreamError):
    """A reused connection closed before any response byte (the replica's idle close)."""


class _Conn(asyncio.Protocol):
    """One connection; `resp` is the response being read on it (None while idle)."""

    __slots__ = ("closed", "idle_since", "in_pool", "pool", "resp", "transport")

    def __init__(self, pool: HostPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.in_pool = False
        self.idle_since = 0.0
        self.resp: Response | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        resp = self.resp
        if resp is None:  # bytes nobody asked for: the connection is out of step
            self.close()
            return
        resp._feed(data)

    def eof_received(self) -> bool:
        self.closed = True
        if self.resp is not None:
            self.resp._eof(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.resp is not None:
            self.resp._eof(exc)
        if self.in_pool:
            self.in_pool = False
            with contextlib.suppress(ValueError):
                self.pool._idle.remove(self)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Response:
    """The head of a replica's answer; read the body with `read()` or `read_chunk()`, then `release()`."""

    __slots__ = (
        "_buffered", "_chunks", "_conn", "_done", "_error", "_got_bytes", "_head_done", "_head_request",
        "_interim", "_keep", "_parser", "_paused", "_released", "_since", "_until_eof", "_waiter",
        "content_length", "headers", "status",
    )

    def __init__(self, conn: _Conn, head_request: bool) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.content_length: int | None = None
        self._conn = conn
        self._parser: Any = httptools.HttpResponseParser(self)
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._head_done = False
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._head_request = head_request
        self._until_eof = False
        self._interim = False
        self._keep = False
        self._released = False
        self._got_bytes = False
        self._since = 0.0

    # -- httptools callbacks -----------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._done:  # a second message after ours: never reuse this connection
            self._keep = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:  # an interim answer (100 Continue): skip it
            self.headers = []
            self._interim = True
            return
        self.status = status
        chunked = False
        for k, v in self.headers:
            if k == b"content-length":
                try:
                    self.content_length = int(v)
                except ValueError:
                    self._fail(UpstreamError("bad Content-Length from the replica"))
                    return
            elif k == b"transfer-encoding":
                chunked = True
        self._head_done = True
        if self._head_request:
            self._done = True  # HEAD answers carry no body (the connection is not reused)
        elif self.content_length is None and not chunked and status not in (101, 204, 304):
            self._until_eof = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._done:
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused and self._conn.transport is not None:
            self._paused = True
            self._conn.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self._done:
            return
        self._keep = bool(self._parser.should_keep_alive())
        self._done = True
        self._wake()

    # -- from the protocol -------------------------------------------------------------------
    def _feed(self, data: bytes) -> None:
        self._got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamError("the replica switched protocols on a plain request"))
        except httptools.HttpParserError as e:
            self._fail(UpstreamError(f"bad response from the replica: {e}"))

    def _eof(self, exc: Exception | None) -> None:
        if self._done or self._error is not None:
            return
        if not self._got_bytes:
            self._fail(_Stale("the replica closed the connection before answering"))
        elif self._head_done and self._until_eof:
            self._done = True  # a body delimited by the close
            self._wake()
        else:
            self._fail(UpstreamError("the replica closed the connection mid-response"))

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._keep = False
        self._conn.close()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _expire(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(TimeoutError("upstream read timed out"))

    async def _wait(self) -> None:
        loop = asyncio.get_running_loop()
        fut = self._waiter = loop.create_future()
        pool = self._conn.pool
        watched = pool.read_timeout > 0
        if watched:
            self._since = loop.time()
            pool._watch(self, loop)
        try:
            await fut
        except TimeoutError as e:
            self._fail(e)
            raise
        finally:
            self._waiter = None
            if watched:
                pool._waiting.discard(self)

    # -- for the caller ----------------------------------------------------------------------
    async def _read_head(self) -> None:
        while not self._head_done:
            if self._error is not None:
                raise self._error
            await self._wait()

    @property
    def at_eof(self) -> bool:
        """The whole body was read (nothing buffered, nothing more coming)."""
        return self._done and not self._chunks

    async def read_chunk(self) -> bytes:
        """What arrived since the last call (waiting for some); b"" once the body is complete."""
        while True:
            chunks = self._chunks
            if chunks:
                data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._buffered = 0
                if self._paused:
                    self._paused = False
                    if self._conn.transport is not None:
                        self._conn.transport.resume_reading()
                return data
            if self._error is not None:
                raise self._error
            if self._done:
                return b""
            await self._wait()

    async def read(self) -> bytes:
        parts: list[bytes] = []
        while True:
            chunk = await self.read_chunk()
            if not chunk:
                return parts[0] if len(parts) == 1 else b"".join(parts)
            parts.append(chunk)

    def release(self) -> None:
        """Give the connection back when the response was read whole and both sides keep it; else close it."""
        if self._released:
            return
        self._released = True
        conn = self._conn
        conn.resp = None
        if self._done and self._keep and self._error is None and not self._chunks and not conn.closed:
            conn.pool._put(conn)
        else:
            conn.close()

    def close(self) -> None:
        """Drop the connection (the rest of the body is not wanted)."""
        self._keep = False
        self.release()


class HostPool:
    """Keep-alive connections to one upstream URL."""

    def __init__(self, url: str, connect_timeout: float, read_timeout: float) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._idle: collections.deque[_Conn] = collections.deque()
        self._closed = False
        self._ssl: ssl.SSLContext | None = None
        self._waiting: set[Response] = set()  # responses waiting for bytes, for the timeout sweep
        self._sweeper: asyncio.TimerHandle | None = None
        if url.startswith("unix://"):
            self.unix_path: str | None = url[len("unix://") :]
            self.host, self.port = "localhost", 0
            host_header = b"localhost"
        else:
            self.unix_path = None
            rest = url.split("://", 1)[-1].split("/", 1)[0]
            if rest.startswith("["):
                host, _, port = rest[1:].partition("]")
                port = port.lstrip(":")
            else:
                host, _, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
            self.host = host or "127.0.0.1"
            tls = url.startswith("https://")
            self.port = int(port) if port else 443 if tls else 80
            if tls:
                self._ssl = ssl.create_default_context()
            host_header = rest.encode("idna") if port else self.host.encode("idna")
        self._host_line = b" HTTP/1.1\r\nhost: " + host_header + b"\r\n"

    def _watch(self, resp: Response, loop: asyncio.AbstractEventLoop) -> None:
        self._waiting.add(resp)
        if self._sweeper is None:
            self._sweeper = loop.call_later(min(self.read_timeout / 4, 1.0), self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweeper = None
        deadline = loop.time() - self.read_timeout
        for resp in [r for r in self._waiting if r._since <= deadline]:
            resp._expire()
        if self._waiting:
            self._sweeper = loop.call_later(min(self.read_timeout / 4, 1.0), self._sweep, loop)

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    def _put(self, conn: _Conn) -> None:
        if self._closed or len(self._idle) >= MAX_IDLE:
            conn.close()
            return
        assert conn.transport is not None
        conn.idle_since = asyncio.get_running_loop().time()
        conn.in_pool = True
        self._idle.append(conn)

    async def _acquire(self) -> tuple[_Conn, bool]:
        idle = self._idle
        if idle:
            now = asyncio.get_running_loop().time()
            while idle:
                conn = idle.pop()
                conn.in_pool = False
                transport = conn.transport
                if conn.closed or transport is None or transport.is_closing() or now - conn.idle_since > KEEPALIVE:
                    conn.close()
                    continue
                return conn, True
        return await self._connect(), False

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout or None):
                if self.unix_path is not None:
                    _, conn = await loop.create_unix_connection(lambda: _Conn(self), self.unix_path)
                else:
                    _, conn = await loop.create_connection(lambda: _Conn(self), self.host, self.port, ssl=self._ssl)
        except OSError as e:
            raise ConnectFailed(f"{type(e).__name__}: {e}") from e
        return conn

    async def request(self, method: bytes, target: bytes, headers: bytes, body: bytes | None) -> Response:
        """Send one request; returns once the response head is in. `headers` are complete
        `name: value\\r\\n` lines (no Host, no Content-Length: this adds both)."""
        head = method + b" " + target + self._host_line + headers
        if body is not None:
            head += b"content-length: %d\r\n\r\n" % len(body)
        else:
            head += b"\r\n"
        for attempt in (0, 1):
            conn, reused = await self._acquire()
            resp = Response(conn, method == b"HEAD")
            conn.resp = resp
            assert conn.transport is not None
            if body is None:
                conn.transport.write(head)
            elif len(body) < 65536:
                conn.transport.write(head + body)
            else:
                conn.transport.writelines((head, body))
            try:
                await resp._read_head()
            except _Stale as e:
                resp.close()
                if reused and attempt == 0 and method in _IDEMPOTENT:
                    continue
                raise UpstreamError(str(e)) from None
            except BaseException:
                resp.close()
                raise
            return resp
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._closed = True
        if self._sweeper is not None and not self._waiting:
            self._sweeper.cancel()
            self._sweeper = None
        while self._idle:
            conn = self._idle.pop()
            conn.in_pool = False
            conn.close()


class UpstreamClient:
    """One `HostPool` per upstream URL."""

    def __init__(self, connect_timeout: float, read_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._pools: dict[str, HostPool] = {}

    def pool(self, url: str) -> HostPool:
        found = self._pools.get(url)
        if found is None:
            found = self._pools[url] = HostPool(url, self.connect_timeout, self.read_timeout)
        return found

    def prune(self, live_urls: set[str]) -> None:
        """Close idle connections to upstreams no longer routed (in-flight responses finish)."""
        for url in [u for u in self._pools if u not in live_urls]:
            self._pools.pop(url).close()

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
