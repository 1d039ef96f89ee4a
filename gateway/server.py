"""Serving the gateway: `build_app(settings)` gives the Litestar ASGI app, `serve(settings)` runs it.

The whole request path is one `@asgi` mount at `/` (host routing must see every path, and a mount
costs ~50-80 us less per request than a normal Litestar route). `GatewayApp` goes one step further:
as the mount takes every path anyway, HTTP and WebSocket scopes are handed to the gateway without
Litestar's router and exception middleware (~10 us per request); Litestar runs the lifespan. For `--workers N > 1` uvicorn
starts N processes that each import `worker_app`; they get the settings from an environment
variable the parent sets, share routes and tokens through the state directory, and Prometheus
runs in multiprocess mode so `/metrics` sums all of them.

Clients are not trusted either. uvicorn offers `timeout_keep_alive` (idle between requests, used)
and `limit_concurrency` (not used: it counts connections only once a request arrives and then
answers 503, so silent connections still take every file descriptor). `GatewayHttpProtocol`
adds what it lacks, per worker: at most `max_connections` open connections (one more is answered
503 and closed at once), a request head complete within `header_timeout` of the connection's
start or of the previous response's end (idle and slowloris connections are closed), a head of
at most `max_header_bytes` (431), and the request's task cancelled when its client goes away
(so the replica's connection is closed and the counters go back at once). On shutdown, requests
get `shutdown_grace` s to finish (uvicorn's `timeout_graceful_shutdown`), then are cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import resource
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from litestar import Litestar, asgi
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.asgi import CANCEL_ON_DISCONNECT, DISCONNECTED, WATCHED
from gateway.core import Gateway
from gateway.errors import ResponseAborted
from gateway.ratelimit import SharedTable
from gateway.settings import SETTINGS_ENV, GatewaySettings

FD_RESERVE = 64  # descriptors kept for listening sockets, files, render workers, logs


@dataclass(frozen=True)
class ClientLimits:
    max_connections: int
    header_timeout: float
    max_header_bytes: int

    @classmethod
    def of(cls, settings: GatewaySettings) -> ClientLimits:
        return cls(settings.max_connections or auto_max_connections(), settings.header_timeout, settings.max_header_bytes)


def auto_max_connections() -> int:
    """Half the descriptors this process may open (a proxied client can pair with one replica
    connection), less a reserve: past that, accept() fails and every client suffers."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(16, (soft - FD_RESERVE) // 2)


def raise_fd_limit() -> None:
    """Soft open-file limit up to the hard one (what nginx's worker_rlimit_nofile does)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


_DEFAULT_LIMITS = ClientLimits(0, 15.0, 64 * 1024)
_TOO_MANY = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 21\r\nconnection: close\r\n\r\ntoo many connections\n"
_TOO_LARGE = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class _HeadWatch:
    """Connections reading a request head, and since when: one sweep every `timeout / 4` s (at
    most 1 s) closes the overdue ones. A timer per request (call_later + cancel) would cost ~8 us
    each on uvloop; a dict entry costs a fraction of one."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.loop = loop
        self.timeout = timeout
        self.since: dict[GatewayHttpProtocol, float] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    def arm(self, proto: GatewayHttpProtocol) -> None:
        if proto not in self.since:
            self.since[proto] = self.loop.time()
            if self._sweeper is None:
                self._sweeper = self.loop.call_later(min(self.timeout / 4, 1.0), self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        cutoff = self.loop.time() - self.timeout
        for proto in [p for p, t in self.since.items() if t <= cutoff]:
            del self.since[proto]
            proto.head_timed_out()
        if self.since:
            self._sweeper = self.loop.call_later(min(self.timeout / 4, 1.0), self._sweep)


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus the client limits above (settings from the app's gateway)."""

    def _limits(self) -> ClientLimits:
        gateway = getattr(self.app, "gateway", None)
        settings = gateway.settings if isinstance(gateway, Gateway) else None
        if settings is None:
            return ClientLimits(auto_max_connections(), _DEFAULT_LIMITS.header_timeout, _DEFAULT_LIMITS.max_header_bytes)
        return ClientLimits.of(settings)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        limits = self.limits = self._limits()
        self._head_bytes = 0
        self._in_head = False
        self._heads: _HeadWatch | None = None
        if limits.header_timeout > 0:
            # One watch per uvicorn server (per event loop), kept on its shared state.
            heads = getattr(self.server_state, "tidegate_heads", None)
            if heads is None:
                heads = _HeadWatch(self.loop, limits.header_timeout)
                self.server_state.tidegate_heads = heads  # type: ignore[attr-defined]
            self._heads = heads
        if len(self.connections) > limits.max_connections:
            transport.write(_TOO_MANY)
            transport.close()
            return
        self._arm()

    def _arm(self) -> None:
        if not self._in_head:
            self._in_head = True
            if self._heads is not None:
                self._heads.arm(self)

    def _disarm(self) -> None:
        self._head_bytes = 0
        if self._in_head:
            self._in_head = False
            if self._heads is not None:
                self._heads.since.pop(self, None)

    def head_timed_out(self) -> None:
        self._in_head = False
        if not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        reading_head = self._in_head
        super().data_received(data)
        if reading_head and self._in_head:  # the head is still not complete
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes and not self.transport.is_closing():
                self.transport.write(_TOO_LARGE)
                self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        scope: Any = self.scope
        scope[WATCHED] = True
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        cycle = self.cycle
        super().connection_lost(exc)
        self._disarm()
        if cycle is not None and not cycle.response_complete:
            scope: Any = cycle.scope
            task = scope.get(CANCEL_ON_DISCONNECT)
            if task is not None and not task.done():
                scope[DISCONNECTED] = True
                task.cancel("client disconnected")


class _QuietAborts(logging.Filter):
    """uvicorn logs an exception escaping the app with its traceback. A `ResponseAborted` was
    logged by the gateway already (one line), and a task cancelled at shutdown is no error."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, ResponseAborted | asyncio.CancelledError)


_QUIET = _QuietAborts()


class GatewayApp(Litestar):
    """Litestar, with requests handed straight to the gateway (what its catch-all mount would do)."""

    __slots__ = ("gateway",)
    gateway: Gateway

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await super().__call__(scope, receive, send)
        else:
            await self.gateway(scope, receive, send)


def build_app(settings: GatewaySettings, gateway: Gateway | None = None, control: Any = None) -> Litestar:
    """The ASGI app. Pass your own `Gateway` to drive its routes in-process (`gateway.set_snapshot`);
    `control` is an ASGI app for `/api/` and `/ui/` on the gateway host (the control API)."""
    gw = gateway or Gateway(settings)
    if control is not None:
        gw.control = control

    @asgi("/", is_mount=True, copy_scope=False)
    async def everything(scope: Any, receive: Any, send: Any) -> None:
        await gw(scope, receive, send)

    app = GatewayApp(
        route_handlers=[everything],
        on_startup=[gw.startup],
        on_shutdown=[gw.shutdown],
        openapi_config=None,
        logging_config=None,
    )
    app.gateway = gw
    app.state.gateway = gw
    uvicorn_log = logging.getLogger("uvicorn.error")
    if _QUIET not in uvicorn_log.filters:
        uvicorn_log.addFilter(_QUIET)
    return app


def worker_app() -> Litestar:
    """uvicorn factory for worker processes (reads the settings the parent put in the environment)."""
    return build_app(GatewaySettings.from_json(os.environ[SETTINGS_ENV]))


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def uvicorn_options(settings: GatewaySettings) -> dict[str, Any]:
    """uvicorn settings the gateway needs; use them when embedding it (`uvicorn.Config(app, **...)`)."""
    return {
        "host": settings.host,
        "port": settings.port,
        "access_log": False,  # ours is structured and never includes tokens
        "proxy_headers": False,  # clients must not rewrite the address we put in X-Forwarded-For
        # The replica's own Server/Date headers pass through; uvicorn's would duplicate them.
        "server_header": False,
        "date_header": False,
        "log_level": "warning",
        "lifespan": "on",
        "http": "gateway.server:GatewayHttpProtocol",
        "timeout_keep_alive": settings.keepalive_timeout,
        "timeout_graceful_shutdown": settings.shutdown_grace,
    }


def serve(settings: GatewaySettings, gateway: Gateway | None = None) -> None:
    """Run the gateway with uvicorn in this thread until interrupted (and the ACME manager beside it)."""
    import uvicorn

    from gateway.tls.listener import GatewayServer, start_acme

    _configure_logging()
    raise_fd_limit()
    common = uvicorn_options(settings)
    if settings.workers <= 1:
        server = GatewayServer(uvicorn.Config(build_app(settings, gateway), **common), settings.https_address)
        acme = start_acme(settings, server)
        try:
            server.run()
        except KeyboardInterrupt:  # uvicorn re-raises the signal it shut down for
            pass
        finally:
            if acme is not None:
                acme.stop()
        if not server.started:
            raise SystemExit(3)  # what uvicorn.run does when startup failed (the reason is logged)
        return
    prom_dir = Path(settings.state_dir) / "gateway" / f"prometheus-{os.getpid()}"
    shutil.rmtree(prom_dir, ignore_errors=True)
    prom_dir.mkdir(mode=0o700, parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(prom_dir)
    # One rate limit table for every worker (gateway.ratelimit), fresh for each run.
    table, sem = prom_dir.parent / f"ratelimit-{os.getpid()}", f"/tidegate-rl-{os.getpid()}"
    SharedTable.create(table, sem)
    settings = dataclasses.replace(settings, ratelimit_table=str(table), ratelimit_sem=sem)
    os.environ[SETTINGS_ENV] = settings.to_json()
    try:
        if settings.https_address is not None:
            from gateway.tls.workers import serve_workers

            serve_workers(settings, uvicorn.Config("gateway.server:worker_app", factory=True, workers=settings.workers, **common))
        else:
            uvicorn.run("gateway.server:worker_app", factory=True, workers=settings.workers, **common)
    finally:
        shutil.rmtree(prom_dir, ignore_errors=True)
        SharedTable.destroy(table, sem)
