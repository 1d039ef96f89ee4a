"""aiohttp sessions to replicas, for WebSocket proxying: one for TCP upstreams, one per unix socket.

Plain HTTP goes through `gateway.upstream.client` (cheaper per request); WebSockets stay on
aiohttp, whose session is tuned for a proxy: no connection limit, no cookie jar, no decompression (bytes pass through untouched) and
no auto-added headers. Replicas of the local backend listen on unix sockets, so an upstream URL
is either `http://host:port` or `unix:///abs/path.sock`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict
from yarl import URL

SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
# Idle upstream connections are dropped before the replica's own idle timeout (uvicorn, which
# vLLM uses, closes after 5 s): a POST sent on a connection the replica just closed cannot be
# retried safely, so we avoid the race instead.
KEEPALIVE = 4.0


_SKIP: CIMultiDict[None] = CIMultiDict((h, None) for h in SKIP_AUTO_HEADERS)


class ProxyRequest(aiohttp.ClientRequest):
    """A request that adds none of aiohttp's default headers: a proxy forwards what the client
    sent. (The session-level skip list does the same at the cost of a sort and two multidict
    copies per request, measurable at this rate.)"""

    def update_auto_headers(self, skip_auto_headers: Iterable[str] | None) -> None:
        self._skip_auto_headers = _SKIP


@dataclass(frozen=True)
class Target:
    session: aiohttp.ClientSession
    scheme: str
    host: str
    port: int | None

    def url(self, raw_path: str, query: str = "") -> URL:
        """The upstream URL for an already percent-encoded path and query (kept byte for byte)."""
        return URL.build(
            scheme=self.scheme, host=self.host, port=self.port, path=raw_path, query_string=query, encoded=True
        )


class UpstreamPool:
    def __init__(self, connect_timeout: float, read_timeout: float) -> None:
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout or None, sock_read=read_timeout or None
        )
        self._tcp: aiohttp.ClientSession | None = None
        self._unix: dict[str, aiohttp.ClientSession] = {}
        self._targets: dict[str, Target] = {}
        self._pruning: set[asyncio.Task[None]] = set()

    def _session(self, connector: aiohttp.BaseConnector) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            timeout=self._timeout,
            request_class=ProxyRequest,
        )

    def target(self, url: str) -> Target:
        found = self._targets.get(url)
        if found is not None:
            return found
        if url.startswith("unix://"):
            path = url[len("unix://") :]
            session = self._unix.get(path)
            if session is None:
                session = self._session(aiohttp.UnixConnector(path=path, limit=0, keepalive_timeout=KEEPALIVE))
                self._unix[path] = session
            target = Target(session, "http", "localhost", None)
        else:
            parsed = URL(url)
            if self._tcp is None:
                self._tcp = self._session(aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=KEEPALIVE))
            target = Target(self._tcp, parsed.scheme or "http", parsed.host or "127.0.0.1", parsed.explicit_port)
        self._targets[url] = target
        return target

    def prune_soon(self, live_urls: set[str]) -> None:
        """`prune` in a task of its own (called from a synchronous route swap)."""
        task = asyncio.ensure_future(self.prune(live_urls))
        self._pruning.add(task)
        task.add_done_callback(self._pruning.discard)

    async def prune(self, live_urls: set[str]) -> None:
        """Close sessions of unix sockets no longer routed (their in-flight responses already hold
        their connections; aiohttp closes idle ones only)."""
        for url in [u for u in self._targets if u not in live_urls]:
            del self._targets[url]
        live_paths = {u[len("unix://") :] for u in live_urls if u.startswith("unix://")}
        for path in [p for p in self._unix if p not in live_paths]:
            session = self._unix.pop(path)
            # Closing a session aborts its in-flight requests; let it go only when idle.
            if session.connector is not None and not getattr(session.connector, "_acquired", None):
                await session.close()
            else:
                self._unix[path] = session

    async def close(self) -> None:
        if self._tcp is not None:
            await self._tcp.close()
        for session in self._unix.values():
            await session.close()
        self._unix.clear()
        self._targets.clear()
