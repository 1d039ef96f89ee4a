"""The gateway's request path: pick the route, check the token, hold through a cold start, forward.

`Gateway` is a raw ASGI callable mounted at `/` of a Litestar app (see `server.py`). Its routing
table is one immutable `RouteTable` built from a `RoutesSnapshot` and swapped in one assignment
(`set_snapshot`), so a request sees either the old table or the new one, never half of each. A
request keeps the `ServiceRoute` it started with; a replica removed meanwhile finishes what it has.
Errors on this path are `GatewayError`s, answered in OpenAI's error shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from gateway import hooks, openai_api
from gateway.asgi import BodyTooLarge, ClientGone, Receive, Scope, Send, read_body, send_error, send_json
from gateway.balancer import Balancer, has_ready
from gateway.metrics_view import MULTIPROC_ENV, metrics_response
from gateway.proxy import relay_response, relay_websocket, request_head, request_headers, wait_disconnect
from gateway.settings import GatewaySettings
from gateway.stats import ServiceStats, Stats
from gateway.templates import TemplateResolver
from gateway.tokens import TOKENS_FILE, AuthResult, TokenStore
from gateway.upstream_client import ConnectFailed, Response, UpstreamClient, UpstreamError
from tidegate.routes import ROUTES_FILE, RoutesSnapshot, ServiceRoute, Upstream
from tidegate.routes_io import read_snapshot
from tidegate.signals import send_signal
from tidegate.stats_file import stats_path, write_stats

log = logging.getLogger("tidegate.gateway")
access_log = logging.getLogger("tidegate.gateway.access")

COLD_START_HEADER = b"x-tidegate-cold-start"
# While a request is held, the demand signal is repeated this often (a reconciler may have missed it).
DEMAND_REPEAT = 10.0
# Authorization header -> verdict, for at most this long (then TokenStore checks again, re-reading
# tokens.json when it changed), and for this many distinct headers.
AUTH_CACHE_SECONDS = 1.0
AUTH_CACHE_SIZE = 4096


class GatewayError(Exception):
    def __init__(
        self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.retry_after = retry_after

    async def send(self, send: Send) -> None:
        headers: list[tuple[bytes, bytes]] = []
        if self.retry_after is not None:
            headers.append((b"retry-after", str(self.retry_after).encode()))
        if self.status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        await send_error(send, self.status, self.message, self.type, self.code, headers)


def auth_error(result: AuthResult) -> GatewayError:
    if result is AuthResult.MISSING:
        return GatewayError(401, "missing bearer token (Authorization: Bearer <token>)", "authentication_error", "missing_api_key")
    return GatewayError(403, "invalid token", "authentication_error", "invalid_api_key")


@dataclass(frozen=True)
class RouteTable:
    snapshot: RoutesSnapshot
    by_host: dict[str, ServiceRoute] = field(default_factory=dict)
    by_model: dict[str, ServiceRoute] = field(default_factory=dict)

    @classmethod
    def build(cls, snapshot: RoutesSnapshot) -> RouteTable:
        by_model = {s.model.name: s for s in snapshot.services.values() if s.model is not None}
        return cls(snapshot, snapshot.by_host(), by_model)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for k, v in scope["headers"]:
        if k == name:
            return bytes(v)
    return None


_SCANNED = "tidegate.headers"


def _scan(scope: Scope) -> tuple[bytes, bytes | None, bytes | None]:
    """Host, Authorization and Content-Length in one pass over the headers (kept in the scope)."""
    host = b""
    auth = clen = None
    for k, v in scope["headers"]:
        if k == b"host":
            host = v
        elif k == b"authorization":
            auth = v
        elif k == b"content-length":
            clen = v
    found = (host, auth, clen)
    scope[_SCANNED] = found
    return found


class Gateway:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.table = RouteTable.build(RoutesSnapshot(domain=settings.domain))
        self.balancer = Balancer(settings.cooldown)
        self.stats = Stats()
        self.tokens = TokenStore(settings.state_dir)
        self.templates = TemplateResolver(
            endpoint=settings.hf_endpoint, cache_dir=Path(settings.state_dir) / "gateway" / "hf-cache"
        )
        self.pool: Any = None  # UpstreamPool (aiohttp, WebSockets), created on the serving loop
        self.client = UpstreamClient(settings.connect_timeout, settings.read_timeout)  # HTTP
        self._changed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._last_demand: dict[str, float] = {}
        self._gateway_host = settings.gateway_host
        self._domain_suffix = "." + settings.domain.lower()
        self._auth_cache: dict[bytes | None, AuthResult] = {}
        self._auth_cache_until = 0.0
        # The control API and dashboard (reconciler.control, mounted by `tidegate up`): gets
        # `/api/…` and `/ui/…` on the gateway host and the bare address, nothing else.
        self.control: Any = None

    # -- routes ------------------------------------------------------------------------------
    def set_snapshot(self, snapshot: RoutesSnapshot) -> None:
        """Swap the routing table (thread-safe; `tidegate up` may call this from its own thread)."""
        self.table = RouteTable.build(snapshot)
        live = {u.replica_id for s in snapshot.services.values() for u in s.upstreams}
        urls = {u.url for s in snapshot.services.values() for u in s.upstreams}
        if self._loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._after_swap(live, urls)
        else:
            self._loop.call_soon_threadsafe(self._after_swap, live, urls)

    def _after_swap(self, live: set[str], urls: set[str]) -> None:
        self.balancer.forget(live)
        self.client.prune(urls)
        if self.pool is not None:
            task = asyncio.ensure_future(self.pool.prune(urls))
            self._tasks.append(task)
            task.add_done_callback(self._tasks.remove)
        old, self._changed = self._changed, asyncio.Event()
        old.set()  # wakes every held request to look at the new table

    def reload(self) -> None:
        try:
            snapshot = read_snapshot(self.settings.state_dir)
        except (OSError, ValueError) as e:
            log.warning("routes.json unreadable, keeping the previous routes: %s", e)
            return
        if snapshot.serial != self.table.snapshot.serial or snapshot != self.table.snapshot:
            self.set_snapshot(snapshot)

    async def _watch(self) -> None:
        from watchfiles import awatch

        state = self.settings.state_dir
        names = {ROUTES_FILE, TOKENS_FILE}
        async for changes in awatch(state, watch_filter=lambda _c, p: os.path.basename(p) in names, recursive=False):
            if any(os.path.basename(p) == ROUTES_FILE for _c, p in changes):
                self.reload()
            if any(os.path.basename(p) == TOKENS_FILE for _c, p in changes):
                self.tokens.refresh()
                self._auth_cache = {}

    async def _publish_stats(self) -> None:
        pid = os.getpid()
        while True:
            try:
                self.stats.flush()
                data = self.stats.snapshot(time.monotonic(), pid, self._per_upstream, at=time.time())
                await asyncio.to_thread(write_stats, self.settings.state_dir, data)
            except OSError as e:
                log.warning("cannot write gateway stats: %s", e)
            await asyncio.sleep(self.settings.stats_interval)

    def _per_upstream(self, service: str) -> dict[str, int]:
        route = self.table.snapshot.services.get(service)
        if route is None:
            return {}
        return {u.replica_id: self.balancer.in_flight.get(u.replica_id, 0) for u in route.upstreams}

    # -- lifecycle ---------------------------------------------------------------------------
    async def startup(self) -> None:
        from gateway.upstream import UpstreamPool

        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._changed = asyncio.Event()
        self.pool = UpstreamPool(self.settings.connect_timeout, self.settings.read_timeout)
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        if self.settings.watch_routes:
            self.reload()
            self._tasks.append(asyncio.ensure_future(self._watch()))
        self._tasks.append(asyncio.ensure_future(self._publish_stats()))

    async def shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self.client.close()
        if self.pool is not None:
            await self.pool.close()
        stats_path(self.settings.state_dir, os.getpid()).unlink(missing_ok=True)
        if os.environ.get(MULTIPROC_ENV):  # this worker's live gauges stop counting
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]

    # -- the request path --------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return
        host_raw = _scan(scope)[0]
        host = host_raw.decode("latin-1").lower()
        bare = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        route = self.table.by_host.get(bare)
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        path = raw_path.decode("latin-1")
        if route is not None:
            await self.serve_service(route, scope, receive, send, path, host)
            return
        if path.startswith("/services/"):
            name, _, rest = path[len("/services/") :].partition("/")
            found = self.table.snapshot.services.get(name)
            if found is None:
                await self._refuse(scope, send, GatewayError(404, f"no service named {name!r}", code="service_not_found"))
                return
            await self.serve_service(found, scope, receive, send, "/" + rest, host)
            return
        if (
            self.control is not None
            and (path.startswith(("/api/", "/ui/")) or path == "/ui")
            and (bare == self._gateway_host or not bare.endswith(self._domain_suffix))
        ):
            await self.control(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 4404})
            return
        try:
            if path.startswith("/v1/") or path == "/v1":
                await openai_api.handle(self, scope, receive, send, path)
            elif path == "/healthz":
                await send_json(send, 200, {"status": "ok", "routes_serial": self.table.snapshot.serial})
            elif path == "/metrics":
                self.stats.flush()
                await metrics_response(send)
            elif path.startswith("/hooks/"):
                await hooks.handle(self, scope, receive, send, path)
            elif bare.endswith(self._domain_suffix) and bare != self._gateway_host:
                raise GatewayError(404, f"no service at host {bare!r}", code="service_not_found")
            else:
                raise GatewayError(404, f"no route for {path}", code="not_found")
        except GatewayError as e:
            await e.send(send)

    async def _refuse(self, scope: Scope, send: Send, error: GatewayError) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 4000 + error.status})
        else:
            await error.send(send)

    def check_token(self, scope: Scope) -> None:
        header = (scope.get(_SCANNED) or _scan(scope))[1]
        now = time.monotonic()
        cache = self._auth_cache
        if now >= self._auth_cache_until or len(cache) >= AUTH_CACHE_SIZE:
            cache = self._auth_cache = {}
            self._auth_cache_until = now + AUTH_CACHE_SECONDS
        result = cache.get(header)
        if result is None:
            result = cache[header] = self.tokens.check(header, now)
        if result is not AuthResult.OK:
            raise auth_error(result)

    async def serve_service(self, route: ServiceRoute, scope: Scope, receive: Receive, send: Send, path: str, host: str) -> None:
        started = time.perf_counter()
        try:
            if route.auth:
                self.check_token(scope)
        except GatewayError as e:
            await self._refuse(scope, send, e)
            self._access(scope, route.name, path, e.status, started)
            return
        st = self.stats.service(route.name)
        st.begin(time.monotonic())
        status = 500
        try:
            if scope["type"] == "websocket":
                status = await self._websocket(route, st, scope, receive, send, path, host)
                return
            body = await self.read_request_body(scope, receive)
            route, waited = await self.ready_route(route, st, receive)
            extra = [(COLD_START_HEADER, f"{waited:.3f}".encode())] if waited is not None else []
            target = path.partition("?")[0].encode("latin-1")
            query: bytes = scope.get("query_string", b"")
            if query:
                target += b"?" + query
            headers = request_head(scope, host, route.forward_auth)
            upstream, resp = await self.open_upstream(route, scope["method"], target, headers, body)
            try:
                status = resp.status
                await relay_response(resp, receive, send, extra)
            finally:
                resp.release()
                self.balancer.release(upstream)
        except GatewayError as e:
            status = e.status
            await self._refuse(scope, send, e)
        except ClientGone:
            status = 499
        finally:
            st.end(status, time.perf_counter() - started)
            self._access(scope, route.name, path, status, started)

    def _access(self, scope: Scope, service: str, path: str, status: int, started: float) -> None:
        if self.settings.access_log and access_log.isEnabledFor(logging.INFO):
            access_log.info(
                json.dumps(
                    {
                        "method": scope.get("method", "WS"),
                        "service": service,
                        "path": path.partition("?")[0],
                        "status": status,
                        "ms": round((time.perf_counter() - started) * 1000, 3),
                        "client": (scope.get("client") or ("",))[0],
                    }
                )
            )

    async def read_request_body(self, scope: Scope, receive: Receive) -> bytes | None:
        limit = self.settings.max_body_bytes
        declared = (scope.get(_SCANNED) or _scan(scope))[2]
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise GatewayError(413, f"request body over the gateway's limit of {limit} bytes", code="body_too_large")
        try:
            body = await read_body(receive, limit)
        except BodyTooLarge as e:
            raise GatewayError(413, f"request body over the gateway's limit of {limit} bytes", code="body_too_large") from e
        return body if body or scope["method"] not in ("GET", "HEAD") else None

    # -- replicas ----------------------------------------------------------------------------
    def _demand(self, service: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_demand.get(service, float("-inf")) < 1.0:
            return
        self._last_demand[service] = now
        try:
            send_signal(self.settings.state_dir, "demand", {"service": service})
        except OSError as e:
            log.warning("cannot signal demand for %s: %s", service, e)

    async def ready_route(
        self, route: ServiceRoute, st: ServiceStats, receive: Receive | None = None
    ) -> tuple[ServiceRoute, float | None]:
        """The route with a ready replica; at zero replicas (min_replicas 0) hold until one is.

        Returns the route to use and, when the request was held, how long it waited. With
        `receive` (the request body already read), a client hanging up ends the hold at once, so
        `held` counts only requests someone still waits for.
        """
        if has_ready(route.upstreams):
            return route, None
        if route.min_replicas > 0:
            raise GatewayError(503, f"service {route.name!r} has no ready replica", "service_unavailable", "no_replica", retry_after=5)
        if st.held >= self.settings.hold_queue:
            raise GatewayError(503, f"service {route.name!r} is starting and its queue is full", "service_unavailable", "queue_full", retry_after=10)
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + self.settings.hold_timeout
        st.held += 1
        st.held_gauge.inc()
        gone = asyncio.ensure_future(wait_disconnect(receive)) if receive is not None else None
        try:
            self._demand(route.name)
            while True:
                current = self.table.snapshot.services.get(route.name)
                if current is None:
                    raise GatewayError(404, f"service {route.name!r} was removed", code="service_not_found")
                if has_ready(current.upstreams):
                    return current, loop.time() - start
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise GatewayError(
                        503, f"service {route.name!r} did not start within {self.settings.hold_timeout:g} s",
                        "service_unavailable", "cold_start_timeout", retry_after=30,
                    )
                changed = asyncio.ensure_future(self._changed.wait())
                try:
                    waiters = {changed} if gone is None else {changed, gone}
                    done, _ = await asyncio.wait(
                        waiters, timeout=min(remaining, DEMAND_REPEAT), return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    changed.cancel()
                if gone is not None and gone in done:
                    raise ClientGone
                if not done:
                    self._demand(route.name, force=True)
        finally:
            st.held -= 1
            st.held_gauge.dec()
            if gone is not None:
                gone.cancel()

    async def open_upstream(
        self, route: ServiceRoute, method: str, target: bytes, headers: bytes, body: bytes | None
    ) -> tuple[Upstream, Response]:
        """Send the request to the least busy replica; the caller releases the response and the
        replica's counter.

        A replica refusing the connection (nothing was sent) is cooled down and the next one tried.
        """
        tried: list[str] = []
        verb = method.encode("latin-1")
        while True:
            upstream = self.balancer.pick(route.upstreams, time.monotonic(), tried)
            if upstream is None:
                if tried:
                    raise GatewayError(502, f"every replica of {route.name!r} refused the connection", "upstream_error", "upstream_refused", retry_after=5)
                raise GatewayError(503, f"service {route.name!r} has no ready replica", "service_unavailable", "no_replica", retry_after=5)
            self.balancer.acquire(upstream)
            try:
                resp = await self.client.pool(upstream.url).request(verb, target, headers, body)
            except ConnectFailed:
                self.balancer.release(upstream)
                self.balancer.cool(upstream, time.monotonic())
                self.stats.upstream_error(route.name, "connect")
                tried.append(upstream.replica_id)
                continue
            except TimeoutError as e:
                self.balancer.release(upstream)
                self.stats.upstream_error(route.name, "timeout")
                raise GatewayError(504, f"replica of {route.name!r} timed out", "upstream_error", "upstream_timeout") from e
            except UpstreamError as e:
                self.balancer.release(upstream)
                self.stats.upstream_error(route.name, "protocol")
                raise GatewayError(502, f"replica of {route.name!r} failed: {e}", "upstream_error", "upstream_failed") from e
            except BaseException:
                self.balancer.release(upstream)
                raise
            return upstream, resp

    async def _websocket(self, route: ServiceRoute, st: ServiceStats, scope: Scope, receive: Receive, send: Send, path: str, host: str) -> int:
        first = await receive()
        if first["type"] != "websocket.connect":
            return 499
        try:
            route, _ = await self.ready_route(route, st)
        except GatewayError as e:
            await send({"type": "websocket.close", "code": 4000 + e.status})
            return e.status
        headers = [(k, v) for k, v in request_headers(scope, host, route.forward_auth) if not k.lower().startswith("sec-websocket-")]
        protocols = tuple(scope.get("subprotocols") or ())
        query = scope.get("query_string", b"").decode("latin-1")
        upstream = self.balancer.pick(route.upstreams, time.monotonic())
        if upstream is None:
            await send({"type": "websocket.close", "code": 4503})
            return 503
        target = self.pool.target(upstream.url)
        self.balancer.acquire(upstream)
        try:
            try:
                ws = await target.session.ws_connect(target.url(path.partition("?")[0], query), headers=headers, protocols=protocols)
            except (aiohttp.ClientError, TimeoutError):
                self.stats.upstream_error(route.name, "websocket")
                await send({"type": "websocket.close", "code": 4502})
                return 502
            await send({"type": "websocket.accept", "subprotocol": ws.protocol})
            await relay_websocket(scope, receive, send, ws)
            return 101
        finally:
            self.balancer.release(upstream)
