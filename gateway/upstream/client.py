"""A small HTTP/1.1 client to replicas: keep-alive pools on asyncio protocols + httptools' parser.

aiohttp's client cost 150-200 us of CPU per proxied request, most of the gateway's budget; this
client does only what a reverse proxy needs, at a fraction of that (the parsing and its limits
are in `gateway.upstream.response`):

- One `HostPool` per upstream URL (`http://host:port`, `https://...`, `unix:///abs/path.sock`).
  Idle connections are reused last-in first-out: the most recently used connection is the one
  least likely to have met the replica's idle close (uvicorn, vLLM's server, closes after 5 s),
  and LIFO lets the surplus of a burst sit unused at the other end, where the reaper closes
  whatever has idled `KEEPALIVE` s (a timer per pool, not per connection). Closure is seen from
  flags the protocol keeps (EOF / connection lost, transport closing), never by probing.
- The request goes out in one write with a Content-Length body (the gateway has read the whole
  body already). The body is handed to the caller chunk by chunk as it arrives (SSE), with
  reading paused while more than `HIGH_WATER` bytes wait for a slow client.
- Only a connection whose response was read to its end, that both sides keep alive and that
  sent nothing more, goes back to the pool; anything else is closed.
- Failures: `ConnectFailed` (nothing was sent: refused, no such socket), `TimeoutError` (connect,
  first byte, or silence between chunks; 0 means no limit), `UpstreamError` (anything else). A
  reused connection found closed before any response byte is retried once, on a new connection
  (never another pooled one, which may be just as stale), for idempotent methods only.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl

from gateway.errors import ConnectFailed, UpstreamError
from gateway.upstream.response import Conn, Response, Stale

KEEPALIVE = 4.0
MAX_IDLE = 512  # idle connections kept per upstream
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})

__all__ = ["KEEPALIVE", "ConnectFailed", "HostPool", "Response", "UpstreamClient", "UpstreamError"]


class HostPool:
    """Keep-alive connections to one upstream URL."""

    def __init__(self, url: str, connect_timeout: float, read_timeout: float, first_byte_timeout: float | None = None) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.first_byte_timeout = read_timeout if first_byte_timeout is None else first_byte_timeout
        self._idle: collections.deque[Conn] = collections.deque()  # oldest left, newest right
        self._closed = False
        self._ssl: ssl.SSLContext | None = None
        self._waiting: set[Response] = set()  # responses waiting for bytes, for the timeout sweep
        self._sweeper: asyncio.TimerHandle | None = None
        self._reaper: asyncio.TimerHandle | None = None
        limits = [t for t in (self.read_timeout, self.first_byte_timeout) if t > 0]
        self._sweep_every = min([t / 4 for t in limits] + [1.0])
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

    # -- timeouts ----------------------------------------------------------------------------
    def _watch(self, resp: Response, loop: asyncio.AbstractEventLoop) -> None:
        self._waiting.add(resp)
        if self._sweeper is None:
            self._sweeper = loop.call_later(self._sweep_every, self._sweep, loop)

    def _unwatch(self, resp: Response) -> None:
        self._waiting.discard(resp)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweeper = None
        now = loop.time()
        for resp in [r for r in self._waiting if r._since + r._limit <= now]:
            resp._expire()
        if self._waiting:
            self._sweeper = loop.call_later(self._sweep_every, self._sweep, loop)

    # -- the idle pool -----------------------------------------------------------------------
    @property
    def idle_count(self) -> int:
        return len(self._idle)

    def _put(self, conn: Conn) -> None:
        if self._closed or len(self._idle) >= MAX_IDLE:
            conn.close()
            return
        assert conn.transport is not None
        loop = asyncio.get_running_loop()
        conn.idle_since = loop.time()
        conn.in_pool = True
        self._idle.append(conn)
        if self._reaper is None:
            self._reaper = loop.call_later(KEEPALIVE, self._reap, loop)

    def _drop_idle(self, conn: Conn) -> None:
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)

    def _reap(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close connections idle for KEEPALIVE s (the oldest sit at the left end)."""
        self._reaper = None
        idle = self._idle
        cutoff = loop.time() - KEEPALIVE
        while idle and idle[0].idle_since <= cutoff:
            conn = idle.popleft()
            conn.in_pool = False
            conn.close()
        if idle:
            self._reaper = loop.call_later(max(idle[0].idle_since + KEEPALIVE - loop.time(), 0.05), self._reap, loop)

    def _take_idle(self) -> Conn | None:
        idle = self._idle
        if not idle:
            return None
        now = asyncio.get_running_loop().time()
        while idle:
            conn = idle.pop()
            conn.in_pool = False
            transport = conn.transport
            if conn.closed or transport is None or transport.is_closing() or now - conn.idle_since > KEEPALIVE:
                conn.close()
                continue
            return conn
        return None

    async def _connect(self) -> Conn:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout or None):
                if self.unix_path is not None:
                    _, conn = await loop.create_unix_connection(lambda: Conn(self), self.unix_path)
                else:
                    _, conn = await loop.create_connection(lambda: Conn(self), self.host, self.port, ssl=self._ssl)
        except OSError as e:
            raise ConnectFailed(f"{type(e).__name__}: {e}") from e
        return conn

    # -- requests ----------------------------------------------------------------------------
    async def request(self, method: bytes, target: bytes, headers: bytes, body: bytes | None) -> Response:
        """Send one request; returns once the response head is in. `headers` are complete
        `name: value\\r\\n` lines (no Host, no Content-Length: this adds both)."""
        head = method + b" " + target + self._host_line + headers
        if body is not None:
            head += b"content-length: %d\r\n\r\n" % len(body)
        else:
            head += b"\r\n"
        conn = self._take_idle()
        reused = conn is not None
        while True:
            if conn is None:
                conn = await self._connect()
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
                await resp.read_head()
            except Stale as e:
                resp.close()
                if reused and method in _IDEMPOTENT:
                    conn, reused = None, False  # once more, on a fresh connection
                    continue
                raise UpstreamError(str(e)) from None
            except BaseException:
                resp.close()
                raise
            return resp

    def close(self) -> None:
        self._closed = True
        if self._sweeper is not None and not self._waiting:
            self._sweeper.cancel()
            self._sweeper = None
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        while self._idle:
            conn = self._idle.pop()
            conn.in_pool = False
            conn.close()


class UpstreamClient:
    """One `HostPool` per upstream URL."""

    def __init__(self, connect_timeout: float, read_timeout: float, first_byte_timeout: float | None = None) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.first_byte_timeout = first_byte_timeout
        self._pools: dict[str, HostPool] = {}

    def pool(self, url: str) -> HostPool:
        found = self._pools.get(url)
        if found is None:
            found = self._pools[url] = HostPool(url, self.connect_timeout, self.read_timeout, self.first_byte_timeout)
        return found

    def prune(self, live_urls: set[str]) -> None:
        """Close idle connections to upstreams no longer routed (in-flight responses finish)."""
        for url in [u for u in self._pools if u not in live_urls]:
            self._pools.pop(url).close()

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
