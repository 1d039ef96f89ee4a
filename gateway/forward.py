"""Forwarding a request to a service's replicas: auth, body, cold start, balancing, relay, counters.

`Forwarder` holds what every handler of the request path shares (settings, routes, tokens,
balancer, stats, the upstream clients); `Gateway` (core.py) adds the lifecycle and the dispatch,
and the handlers (`api.openai`, `webhooks.handler`) take a `Forwarder`, so nothing imports the core back.

Counters (`in_flight` per service and per replica) are taken and given back in `finally`, so a
request that fails, times out or is cancelled (its client went away: the server cancels it, see
`asgi.CANCEL_ON_DISCONNECT`) never leaks one, and its upstream connection is closed, which tells
a model server to stop generating for nobody.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp

from gateway.access.auth import Authenticator
from gateway.access.tokens import TokenStore
from gateway.api.render import RenderPool
from gateway.api.templates import TemplateResolver
from gateway.asgi import (
    CANCEL_ON_DISCONNECT,
    DISCONNECTED,
    WATCHED,
    BodyTooLarge,
    ClientGone,
    Receive,
    Scope,
    Send,
    error_body,
    read_body,
    scan,
)
from gateway.balancer import Balancer
from gateway.coldstart import ColdStart
from gateway.errors import ConnectFailed, GatewayError, ResponseAborted, UpstreamError
from gateway.ratelimit import Limiter, SharedTable, TokenLimits
from gateway.routing import Router
from gateway.settings import GatewaySettings
from gateway.stats.counters import ServiceStats, Stats
from gateway.upstream.client import UpstreamClient
from gateway.upstream.relay import (
    BodyRewrite,
    relay_response,
    relay_websocket,
    request_head,
    request_headers,
    upstream_failure,
)
from gateway.upstream.response import Response
from gateway.upstream.websocket import UpstreamPool
from gateway.webhooks.deliveries import DeliveryLog
from tidegate.routes import ServiceRoute, Upstream

log = logging.getLogger("tidegate.gateway")
access_log = logging.getLogger("tidegate.gateway.access")

COLD_START_HEADER = b"x-tidegate-cold-start"


async def refuse_websocket(scope: Scope, send: Send, error: GatewayError) -> None:
    """Refuse a WebSocket handshake the way plain HTTP would answer (status + JSON error), where
    the server supports it (ASGI `websocket.http.response`); else a close, which uvicorn turns
    into a bare 403."""
    if "websocket.http.response" in (scope.get("extensions") or {}):
        body = json.dumps(error_body(error.message, error.type, error.code)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)), *error.headers()]
        await send({"type": "websocket.http.response.start", "status": error.status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body, "more_body": False})
    else:
        await send({"type": "websocket.close", "code": 4000 + error.status})


class Forwarder:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.router = Router(settings.domain, self._after_swap)
        self.balancer = Balancer(settings.cooldown)
        self.stats = Stats()
        self.tokens = TokenStore(settings.state_dir)
        self.auth = Authenticator(self.tokens)
        self.cold = ColdStart(settings, self.router)
        self.templates = TemplateResolver(
            endpoint=settings.hf_endpoint, cache_dir=Path(settings.state_dir) / "gateway" / "hf-cache"
        )
        self.renderer = RenderPool(settings.template_workers, settings.template_timeout, settings.template_max_bytes)
        self.ws_pool: UpstreamPool | None = None  # aiohttp, created on the serving loop
        self.client = UpstreamClient(settings.connect_timeout, settings.read_timeout, settings.first_byte_timeout)
        self.gateway_host = settings.gateway_host
        self.deliveries = DeliveryLog(settings.state_dir / "gateway" / "deliveries")
        # Set by an in-process reconciler: receives (event, payload) of webhooks that passed the
        # HMAC check (webhooks/handler.py); the only way webhook facts reach it (signal files cannot).
        self.verified_events: Callable[[str, dict[str, Any]], None] | None = None
        table = (
            SharedTable.attach(Path(settings.ratelimit_table), settings.ratelimit_sem)
            if settings.ratelimit_table and settings.ratelimit_sem
            else SharedTable.private()
        )
        self.limiter = Limiter(table, TokenLimits.from_settings(settings.token_limits))

    def _after_swap(self, live: set[str], urls: set[str]) -> None:
        self.balancer.forget(live)
        self.client.prune(urls)
        if self.ws_pool is not None:
            self.ws_pool.prune_soon(urls)

    def check_token(self, scope: Scope, path: str | None = None) -> None:
        """401/403 without a valid token; with `path`, also 429 when that token is over its limit."""
        name = self.auth.check(scope)
        if path is not None and name is not None and self.limiter.tokens is not None:
            self.limiter.check_token(name, path)

    def admit(self, route: ServiceRoute, scope: Scope, path: str, token: bool = True) -> None:
        """What a request to a service must pass before it is read: the service is not stopped,
        its `rate_limits` (per client, before auth: bad tokens count too), its token and the
        token's limits."""
        if route.stopped:
            raise GatewayError(
                503, f"service {route.name!r} is stopped (`tidegate start {route.name}` resumes it)",
                "service_unavailable", "service_stopped",
            )
        if route.rate_limits:
            self.limiter.check_service(route.name, route.rate_limits, scope, path)
        if route.auth and token:
            self.check_token(scope, path)

    # -- one request -------------------------------------------------------------------------
    @contextmanager
    def counted(self, scope: Scope, service: str, path: str, status: list[int]) -> Iterator[ServiceStats]:
        """Count a request in its service's stats and log it when it ends (`status[0]` is what
        the body of the `with` decided; a cancelled request, its client gone, is a 499)."""
        started = time.perf_counter()
        st = self.stats.service(service)
        st.begin(time.monotonic())
        try:
            yield st
        finally:
            scope.pop(CANCEL_ON_DISCONNECT, None)
            st.end(status[0], time.perf_counter() - started)
            self.access(scope, service, path, status[0], started)

    @staticmethod
    def watch_disconnect(scope: Scope) -> None:
        if scope.get(WATCHED):
            scope[CANCEL_ON_DISCONNECT] = asyncio.current_task()

    @staticmethod
    def cancelled_by_disconnect(scope: Scope) -> bool:
        """In `except CancelledError`: whether the server cancelled us because the client went
        (then the cancellation is ours to absorb), not a shutdown (then it must propagate)."""
        task = asyncio.current_task()
        if scope.get(DISCONNECTED) and task is not None and task.cancelling():
            task.uncancel()
            return True
        return False

    async def serve_service(self, route: ServiceRoute, scope: Scope, receive: Receive, send: Send, path: str, host: str) -> None:
        if scope["type"] == "websocket":
            await self._serve_websocket(route, scope, receive, send, path, host)
            return
        started = time.perf_counter()
        if route.auth or route.rate_limits or route.stopped:
            try:
                self.admit(route, scope, path)
            except GatewayError as e:
                await e.send(send)
                if e.status == 429:
                    self.stats.refused(route.name, 429)
                self.access(scope, route.name, path, e.status, started)
                return
        # The hot path: counted inline (what `counted` does, without its generator's cost).
        st = self.stats.service(route.name)
        st.begin(time.monotonic())
        status = [500]
        self.watch_disconnect(scope)
        try:
            body = await self.read_request_body(scope, receive)
            route, waited = await self.cold.ready_route(route, st, receive)
            extra = [(COLD_START_HEADER, f"{waited:.3f}".encode())] if waited is not None else []
            target = path.partition("?")[0].encode("latin-1")
            query: bytes = scope.get("query_string", b"")
            if query:
                target += b"?" + query
            headers = request_head(scope, host, route.forward_auth)
            await self.forward(route, scope, receive, send, scope["method"], target, headers, body, extra, status)
        except GatewayError as e:
            status[0] = e.status
            await e.send(send)
        except ClientGone:
            status[0] = 499
        except asyncio.CancelledError:
            if not self.cancelled_by_disconnect(scope):
                raise
            status[0] = 499
        finally:
            scope.pop(CANCEL_ON_DISCONNECT, None)  # scope -> task -> coroutine -> scope: no cycle left for the GC
            st.end(status[0], time.perf_counter() - started)
            self.access(scope, route.name, path, status[0], started)

    async def forward(
        self, route: ServiceRoute, scope: Scope, receive: Receive, send: Send, method: str, target: bytes, headers: bytes,
        body: bytes | None, extra: list[tuple[bytes, bytes]], status: list[int], rewrite: BodyRewrite | None = None,
    ) -> None:
        """Send to a replica and relay its answer; a failure after the response started cuts the
        client's connection (`ResponseAborted`, logged here once)."""
        upstream, resp = await self.open_upstream(route, method, target, headers, body)
        try:
            status[0] = resp.status
            await relay_response(resp, receive, send, extra, route.name, bool(scope.get(WATCHED)), rewrite)
        except GatewayError:
            self.stats.upstream_error(route.name, "protocol")
            raise
        except ResponseAborted as e:
            status[0] = 502
            self.stats.upstream_error(route.name, "stream")
            log.warning("%s %s: replica %s failed mid-response, client connection cut: %s",
                        route.name, target.decode("latin-1")[:200], upstream.replica_id, e)
            raise
        finally:
            resp.release()
            self.balancer.release(upstream)

    def access(self, scope: Scope, service: str, path: str, status: int, started: float) -> None:
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

    async def read_request_body(self, scope: Scope, receive: Receive, limit: int | None = None) -> bytes | None:
        limit = self.settings.max_body_bytes if limit is None else limit
        declared = scan(scope)[2]
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise GatewayError(413, f"request body over the limit of {limit} bytes", code="body_too_large")
        try:
            body = await read_body(receive, limit)
        except BodyTooLarge as e:
            raise GatewayError(413, f"request body over the limit of {limit} bytes", code="body_too_large") from e
        return body if body or scope["method"] not in ("GET", "HEAD") else None

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
            except (TimeoutError, UpstreamError) as e:
                self.balancer.release(upstream)
                self.stats.upstream_error(route.name, "timeout" if isinstance(e, TimeoutError) else "protocol")
                raise upstream_failure(e, route.name) from e
            except BaseException:
                self.balancer.release(upstream)
                raise
            self.balancer.answered(upstream, time.time())
            return upstream, resp

    # -- WebSockets --------------------------------------------------------------------------
    async def _serve_websocket(self, route: ServiceRoute, scope: Scope, receive: Receive, send: Send, path: str, host: str) -> None:
        started = time.perf_counter()
        first = await receive()
        if first["type"] != "websocket.connect":
            self.access(scope, route.name, path, 499, started)
            return
        if route.auth or route.rate_limits or route.stopped:
            try:
                self.admit(route, scope, path)
            except GatewayError as e:
                await refuse_websocket(scope, send, e)
                self.access(scope, route.name, path, e.status, started)
                return
        status = [500]
        with self.counted(scope, route.name, path, status) as st:
            try:
                status[0] = await self._websocket(route, st, scope, receive, send, path, host)
            except GatewayError as e:
                status[0] = e.status
                await refuse_websocket(scope, send, e)

    async def _websocket(self, route: ServiceRoute, st: ServiceStats, scope: Scope, receive: Receive, send: Send, path: str, host: str) -> int:
        route, _ = await self.cold.ready_route(route, st)
        headers = [(k, v) for k, v in request_headers(scope, host, route.forward_auth) if not k.lower().startswith("sec-websocket-")]
        protocols = tuple(scope.get("subprotocols") or ())
        query = scope.get("query_string", b"").decode("latin-1")
        upstream = self.balancer.pick(route.upstreams, time.monotonic())
        if upstream is None:
            raise GatewayError(503, f"service {route.name!r} has no ready replica", "service_unavailable", "no_replica", retry_after=5)
        assert self.ws_pool is not None
        target = self.ws_pool.target(upstream.url)
        self.balancer.acquire(upstream)
        try:
            try:
                ws = await target.session.ws_connect(target.url(path.partition("?")[0], query), headers=headers, protocols=protocols)
            except (aiohttp.ClientError, TimeoutError) as e:
                self.stats.upstream_error(route.name, "websocket")
                raise GatewayError(502, f"replica of {route.name!r} refused the WebSocket: {type(e).__name__}", "upstream_error", "upstream_failed") from e
            await send({"type": "websocket.accept", "subprotocol": ws.protocol})
            await relay_websocket(scope, receive, send, ws)
            return 101
        finally:
            self.balancer.release(upstream)

