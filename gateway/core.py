"""The gateway: what answers a request (service by host or path, the API, hooks, health, metrics)
and what runs beside the requests (routes and tokens watched, stats published).

`Gateway` is a raw ASGI callable mounted at `/` of a Litestar app (see `server.py`); it is a
`Forwarder` (forward.py: the path to replicas) plus its lifecycle and this dispatch. Errors on
the request path are `GatewayError`s answered in OpenAI's error shape; anything else escaping a
handler is a bug, answered 500 in the same shape and logged with its traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any

from gateway.access.auth import MetricsAccess, metrics_need_token
from gateway.access.tokens import TOKENS_FILE
from gateway.api import openai as openai_api  # not `openai`: the SDK of that name
from gateway.asgi import ClientGone, Receive, Scope, Send, scan, send_json
from gateway.errors import GatewayError, ResponseAborted
from gateway.forward import Forwarder, refuse_websocket
from gateway.routing import RouteTable
from gateway.settings import GatewaySettings
from gateway.stats.metrics import MULTIPROC_ENV, metrics_response
from gateway.tls import challenges
from gateway.tls.certs import CertStore
from gateway.upstream.websocket import UpstreamPool
from gateway.webhooks import handler as hooks
from tidegate.etcd_watch import read_feed_status
from tidegate.fsio import describe_os_error
from tidegate.routes import ROUTES_FILE, RoutesSnapshot
from tidegate.stats_file import stats_path, write_stats

log = logging.getLogger("tidegate.gateway")


class Gateway(Forwarder):
    def __init__(self, settings: GatewaySettings) -> None:
        super().__init__(settings)
        self._tasks: list[asyncio.Task[None]] = []
        self._domain_suffix = "." + settings.domain.lower()
        self._metrics_token = metrics_need_token(MetricsAccess(settings.metrics), settings.host)
        # The control API and dashboard (reconciler.control, mounted by `tidegate up`): gets
        # `/api/…` and `/ui/…` on the gateway host and the bare address, nothing else.
        self.control: Any = None
        # HTTPS (gateway/tls): this worker's certificates, for the listener's SNI and for the
        # redirect of plain requests; None when the gateway has no HTTPS listener.
        self.tls: CertStore | None = None
        self._https_port = ""
        if settings.https_address is not None:
            self.tls = CertStore(settings.state_dir, settings.tls_cert, settings.tls_key)
            self.https_bound(settings.https_address[1])

    @property
    def table(self) -> RouteTable:
        return self.router.table

    def set_snapshot(self, snapshot: RoutesSnapshot) -> None:
        """Swap the routing table (thread-safe; `tidegate up` may call this from its own thread)."""
        self.router.set_snapshot(snapshot)

    def reload(self) -> None:
        self.router.reload(self.settings.state_dir)

    # -- beside the requests -----------------------------------------------------------------
    async def _watch(self) -> None:
        from watchfiles import awatch

        state = self.settings.state_dir
        names = {ROUTES_FILE, TOKENS_FILE}
        async for changes in awatch(state, watch_filter=lambda _c, p: os.path.basename(p) in names, recursive=False):
            if any(os.path.basename(p) == ROUTES_FILE for _c, p in changes):
                self.reload()
            if any(os.path.basename(p) == TOKENS_FILE for _c, p in changes):
                self.tokens.refresh()
                self.auth.forget()

    async def _publish_stats(self) -> None:
        pid = os.getpid()
        failing: str | None = None  # logged once per distinct error (a full disk fails every time)
        while True:
            try:
                self.stats.flush()
                data = self.stats.snapshot(time.monotonic(), pid, self._per_upstream, at=time.time(), answered=self._answered)
                await asyncio.to_thread(write_stats, self.settings.state_dir, data)
                failing = None
            except OSError as e:
                if describe_os_error(e, self.settings.state_dir) != failing:
                    failing = describe_os_error(e, self.settings.state_dir)
                    log.warning("cannot write gateway stats: %s", failing)
            await asyncio.sleep(self.settings.stats_interval)

    def _per_upstream(self, service: str) -> dict[str, int]:
        route = self.router.service(service)
        if route is None:
            return {}
        return {u.replica_id: self.balancer.in_flight.get(u.replica_id, 0) for u in route.upstreams}

    def _answered(self, service: str) -> dict[str, float]:
        route = self.router.service(service)
        if route is None:
            return {}
        seen = self.balancer.answered_at
        return {u.replica_id: seen[u.replica_id] for u in route.upstreams if u.replica_id in seen}

    def https_bound(self, port: int) -> None:
        """The HTTPS listener's port, for redirects (the server says which one `:0` got)."""
        self._https_port = "" if port == 443 else f":{port}"

    async def _refresh_certs(self) -> None:
        assert self.tls is not None
        while True:
            await asyncio.sleep(1.0)
            await asyncio.to_thread(self.tls.refresh)

    async def startup(self) -> None:
        self.router.bind(asyncio.get_running_loop())
        self.ws_pool = UpstreamPool(self.settings.connect_timeout, self.settings.read_timeout)
        self.settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # state dirs are private
        if self.settings.watch_routes:
            self.reload()
            self._tasks.append(asyncio.ensure_future(self._watch()))
        self._tasks.append(asyncio.ensure_future(self._publish_stats()))
        if self.tls is not None:
            self._tasks.append(asyncio.ensure_future(self._refresh_certs()))

    async def shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self.client.close()
        self.renderer.close()
        if self.ws_pool is not None:
            await self.ws_pool.close()
        stats_path(self.settings.state_dir, os.getpid()).unlink(missing_ok=True)
        if os.environ.get(MULTIPROC_ENV):  # this worker's live gauges stop counting
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]

    # -- the request path --------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return
        host_raw = scan(scope)[0]
        host = host_raw.decode("latin-1").lower()
        bare = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        table = self.router.table
        route = table.by_host.get(bare)
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        path = raw_path.decode("latin-1")
        if self.tls is not None and scope["type"] == "http" and await self._tls_first(scope, send, path, bare):
            return
        try:
            if route is not None:
                await self.serve_service(route, scope, receive, send, path, host)
                return
            if path.startswith("/services/"):
                name, _, rest = path[len("/services/") :].partition("/")
                found = table.snapshot.services.get(name)
                if found is None or found.withdrawn:
                    raise GatewayError(404, f"no service named {name!r}", code="service_not_found")
                await self.serve_service(found, scope, receive, send, "/" + rest, host)
                return
            if (path.startswith(("/api/", "/ui/")) or path == "/ui") and (
                bare == self.gateway_host or not bare.endswith(self._domain_suffix)
            ):
                if self.control is None:  # a standalone `tidegate gateway`: say where they are
                    raise GatewayError(
                        404,
                        "the control API and dashboard are served by `tidegate up` (any `up` on this "
                        "state, leader or standby), not by a standalone `tidegate gateway`",
                        code="control_not_here",
                    )
                await self.control(scope, receive, send)
                return
            if scope["type"] == "websocket":
                raise GatewayError(404, f"no service at host {bare!r}", code="service_not_found")
            await self._local(scope, receive, send, path, bare)
        except GatewayError as e:
            if scope["type"] == "websocket":
                await refuse_websocket(scope, send, e)
            else:
                await e.send(send)
        except ClientGone:
            return  # hung up while sending its request: nobody to answer
        except ResponseAborted:
            raise  # logged where it happened; the server cuts the connection
        except Exception:
            log.exception("%s %s: unexpected error", scope.get("method", "WS"), path.partition("?")[0][:200])
            if scope["type"] == "http":
                with contextlib.suppress(Exception):
                    await GatewayError(500, "internal gateway error", "server_error", "internal_error").send(send)

    async def _tls_first(self, scope: Scope, send: Send, path: str, bare: str) -> bool:
        """ACME's HTTP-01 answers (any host, never redirected), then plain HTTP to a host with a
        certificate redirected to HTTPS (308 keeps the method and body). True when answered."""
        assert self.tls is not None
        if path.startswith(challenges.PREFIX):
            answer = challenges.answer(self.settings.state_dir, path)
            if answer is None:
                await GatewayError(404, "no such ACME challenge", code="not_found").send(send)
            else:
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-type", b"application/octet-stream"), (b"content-length", str(len(answer)).encode())]})
                await send({"type": "http.response.body", "body": answer})
            return True
        if scope.get("scheme") != "http" or not self.tls.has_cert(bare):
            return False
        query: bytes = scope.get("query_string", b"")
        location = f"https://{bare}{self._https_port}{path}" + (f"?{query.decode('latin-1')}" if query else "")
        await send({"type": "http.response.start", "status": 308,
                    "headers": [(b"location", location.encode("latin-1")), (b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
        return True

    async def _local(self, scope: Scope, receive: Receive, send: Send, path: str, bare: str) -> None:
        """What the gateway answers itself."""
        if path.startswith("/v1/") or path == "/v1":
            await openai_api.handle(self, scope, receive, send, path)
        elif bare == self.gateway_host and openai_api.at_root(path):
            # The seed's `OpenAI(base_url="https://gateway.<domain>")`: the API without `/v1` too.
            await openai_api.handle(self, scope, receive, send, "/v1" + path)
        elif path == "/healthz":
            serial = self.router.table.snapshot.serial
            self.tokens.refresh()
            shared = read_feed_status(self.settings.state_dir)  # etcd out of reach (shared state only)
            if self.tokens.error is not None:  # serving with the last good tokens: say so
                await send_json(send, 503, {"status": "unhealthy", "error": self.tokens.error, "routes_serial": serial})
            elif shared is not None:  # serving the last known routes and tokens: say so, still serving
                await send_json(send, 200, {"status": "degraded", "error": shared, "routes_serial": serial})
            else:
                await send_json(send, 200, {"status": "ok", "routes_serial": serial})
        elif path == "/metrics":
            if self._metrics_token:
                self.check_token(scope)
            self.stats.flush()
            await metrics_response(send)
        elif path.startswith("/hooks/"):
            await hooks.handle(self, scope, receive, send, path)
        elif bare.endswith(self._domain_suffix) and bare != self.gateway_host:
            raise GatewayError(404, f"no service at host {bare!r}", code="service_not_found")
        else:
            raise GatewayError(404, f"no route for {path}", code="not_found")
