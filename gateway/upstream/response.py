"""One upstream connection and the response read on it: httptools' parser under the limits a proxy needs.

A replica is not trusted (SECURITY.md), so everything it controls is bounded or checked here:
- The response head (status line, headers, and any interim 1xx heads before it) may take at most
  `MAX_HEAD_BYTES` (64 KiB, as common proxies allow); past it the exchange fails (-> 502).
- Framing follows RFC 9112 6.3: Content-Length; `Transfer-Encoding` whose only coding is
  `chunked`; else the body runs until the replica closes. Any other transfer coding (`gzip`,
  `gzip, chunked`, ...) fails: we do not decode transfer codings, and forwarding coded bytes
  without the header that names the coding would hand the client a corrupt body.
- A 101 answer to a plain request (the gateway never asks a replica to upgrade) is an error.
- Once a message is complete, any further byte means the connection is out of step: the
  response keeps what it got, and the connection is closed, never pooled.
- A body delimited by the close ends only on a clean EOF; a reset (or any error) mid-body is an
  error, never a short body passed off as complete.
- Timeouts: the head must arrive within `first_byte_timeout` of the request; after it, a silence
  of `read_timeout` between chunks fails the read. Both are enforced by the pool's periodic sweep
  over waiting responses (a timer per read costs ~8 us on uvloop).
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any, Protocol

import httptools

from gateway.errors import UpstreamError

HIGH_WATER = 256 * 1024
MAX_HEAD_BYTES = 64 * 1024


class Stale(UpstreamError):
    """A reused connection closed before any response byte (the replica's idle close)."""


class PoolHooks(Protocol):
    """What a connection needs from the pool that owns it (`gateway.upstream.client.HostPool`)."""

    read_timeout: float
    first_byte_timeout: float

    def _put(self, conn: Conn) -> None: ...
    def _drop_idle(self, conn: Conn) -> None: ...
    def _watch(self, resp: Response, loop: asyncio.AbstractEventLoop) -> None: ...
    def _unwatch(self, resp: Response) -> None: ...


class Conn(asyncio.Protocol):
    """One connection; `resp` is the response being read on it (None while idle)."""

    __slots__ = ("closed", "idle_since", "in_pool", "pool", "resp", "transport")

    def __init__(self, pool: PoolHooks) -> None:
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
            # Lost without a clean EOF first (eof_received ended the body already): a reset.
            self.resp._eof(exc or ConnectionResetError("connection lost"))
        if self.in_pool:
            self.in_pool = False
            self.pool._drop_idle(self)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _only_chunked(values: list[bytes]) -> bool | None:
    """True: chunked; False: no Transfer-Encoding; None: a coding we do not speak."""
    if not values:
        return False
    codings = [c.strip().lower() for v in values for c in v.split(b",") if c.strip()]
    return True if codings == [b"chunked"] else None


class Response:
    """The head of a replica's answer; read the body with `read()` or `read_chunk()`, then `release()`."""

    __slots__ = (
        "_buffered", "_chunks", "_conn", "_done", "_error", "_extra", "_got_bytes", "_head_bytes", "_head_done",
        "_head_request", "_interim", "_keep", "_limit", "_parser", "_paused", "_released", "_since", "_until_eof",
        "_waiter", "content_length", "headers", "status",
    )

    def __init__(self, conn: Conn, head_request: bool) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.content_length: int | None = None
        self._conn = conn
        self._parser: Any = httptools.HttpResponseParser(self)
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._head_done = False
        self._head_bytes = 0
        self._done = False
        self._extra = False
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
        self._limit = conn.pool.first_byte_timeout

    # -- httptools callbacks -----------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._done:  # a second message after ours: never reuse this connection
            self._extra = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._head_done:  # trailers, or the head of a message nobody asked for
            return
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        if self._head_done:
            self._extra = True
            return
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:  # an interim answer (100 Continue): skip it
            self.headers = []
            self._interim = True
            return
        if status == 101:
            self._fail(UpstreamError("the replica switched protocols (101) on a plain request"))
            return
        self.status = status
        codings: list[bytes] = []
        for k, v in self.headers:
            if k == b"content-length":
                try:
                    self.content_length = int(v)
                except ValueError:
                    self._fail(UpstreamError("bad Content-Length from the replica"))
                    return
            elif k == b"transfer-encoding":
                codings.append(v)
        chunked = _only_chunked(codings)
        if chunked is None:
            self._fail(UpstreamError("the replica used a transfer coding other than chunked"))
            return
        self._head_done = True
        self._limit = self._conn.pool.read_timeout
        if self._head_request:
            self._done = True  # HEAD answers carry no body (the connection is not reused)
        elif self.content_length is None and not chunked and status not in (204, 304):
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
            if not self._head_request:
                self._extra = True
            return
        self._keep = bool(self._parser.should_keep_alive())
        self._done = True
        self._wake()

    # -- from the protocol -------------------------------------------------------------------
    def _feed(self, data: bytes) -> None:
        self._got_bytes = True
        if self._done or self._error is not None:
            # Anything after a complete message: the connection is out of step.
            self._extra = True
            self._conn.close()
            return
        if not self._head_done:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserUpgrade, httptools.HttpParserError) as e:
            if self._done:  # our message was complete; what broke the parser came after it
                self._extra = True
            elif isinstance(e, httptools.HttpParserUpgrade):
                self._fail(UpstreamError("the replica switched protocols on a plain request"))
            else:
                self._fail(UpstreamError(f"bad response from the replica: {e}"))
        if not self._head_done and self._head_bytes > MAX_HEAD_BYTES and self._error is None:
            self._fail(UpstreamError(f"the replica's response head is over {MAX_HEAD_BYTES // 1024} KiB"))
        if self._extra:
            self._keep = False
            self._conn.close()

    def _eof(self, exc: BaseException | None) -> None:
        if self._done or self._error is not None:
            return
        if not self._got_bytes:
            self._fail(Stale("the replica closed the connection before answering"))
        elif self._head_done and self._until_eof and exc is None:
            self._done = True  # a body delimited by the close
            self._wake()
        elif exc is not None and not isinstance(exc, UpstreamError):
            self._fail(UpstreamError(f"the connection to the replica broke mid-response ({type(exc).__name__})"))
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
            what = "read" if self._head_done else "first byte"
            waiter.set_exception(TimeoutError(f"upstream {what} timed out"))

    async def _wait(self) -> None:
        loop = asyncio.get_running_loop()
        fut = self._waiter = loop.create_future()
        pool = self._conn.pool
        watched = self._limit > 0
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
                pool._unwatch(self)

    # -- for the caller ----------------------------------------------------------------------
    async def read_head(self) -> None:
        """Wait until the status line and headers are in (or the exchange failed)."""
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

    async def read(self, limit: int | None = None) -> bytes:
        """The rest of the body; with `limit`, an `UpstreamError` once it passes that many bytes."""
        parts: list[bytes] = []
        size = 0
        while True:
            chunk = await self.read_chunk()
            if not chunk:
                return parts[0] if len(parts) == 1 else b"".join(parts)
            size += len(chunk)
            if limit is not None and size > limit:
                self.close()
                raise UpstreamError(f"the replica's response body is over {limit} bytes")
            parts.append(chunk)

    def release(self) -> None:
        """Give the connection back when the response was read whole and both sides keep it; else close it."""
        if self._released:
            return
        self._released = True
        conn = self._conn
        conn.resp = None
        if self._done and self._keep and not self._extra and self._error is None and not self._chunks and not conn.closed:
            conn.pool._put(conn)
        else:
            conn.close()

    def close(self) -> None:
        """Drop the connection (the rest of the body is not wanted)."""
        self._keep = False
        self.release()
