"""Serving the gateway: `build_app(settings)` gives the Litestar ASGI app, `serve(settings)` runs it.

The whole request path is one `@asgi` mount at `/` (host routing must see every path, and a mount
costs ~50-80 us less per request than a normal Litestar route). `GatewayApp` goes one step further:
as the mount takes every path anyway, HTTP and WebSocket scopes are handed to the gateway without
Litestar's router and exception middleware (~10 us per request); Litestar runs the lifespan. For `--workers N > 1` uvicorn
starts N processes that each import `worker_app`; they get the settings from an environment
variable the parent sets, share routes and tokens through the state directory, and Prometheus
runs in multiprocess mode so `/metrics` sums all of them.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from litestar import Litestar, asgi

from gateway.core import Gateway
from gateway.settings import SETTINGS_ENV, GatewaySettings


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
        "timeout_keep_alive": 30,
    }


def serve(settings: GatewaySettings, gateway: Gateway | None = None) -> None:
    """Run the gateway with uvicorn in this thread until interrupted."""
    import uvicorn

    _configure_logging()
    common = uvicorn_options(settings)
    if settings.workers <= 1:
        uvicorn.run(build_app(settings, gateway), **common)
        return
    prom_dir = Path(settings.state_dir) / "gateway" / f"prometheus-{os.getpid()}"
    shutil.rmtree(prom_dir, ignore_errors=True)
    prom_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(prom_dir)
    os.environ[SETTINGS_ENV] = settings.to_json()
    try:
        uvicorn.run("gateway.server:worker_app", factory=True, workers=settings.workers, **common)
    finally:
        shutil.rmtree(prom_dir, ignore_errors=True)
