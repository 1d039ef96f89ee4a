"""`build_control_app`: the Litestar application behind `/api/` and `/ui/` (mounted by `tidegate up`).

One exception handler maps every error to the API's shape `{"error": {"code", "message"}}`
(a dashboard page without a session redirects to the login form instead); the OpenAPI document
is generated from the controllers at `/api/schema` (JSON at `/api/schema/openapi.json`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from jinja2 import Environment
from litestar import Litestar, MediaType, Request, Response
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from reconciler.control import models as m
from reconciler.control.api import CONTROLLERS
from reconciler.control.auth import ControlContext, LoginRequired
from reconciler.control.plane import ControlError
from reconciler.control.ui import DashboardController

HERE = Path(__file__).parent
log = logging.getLogger("tidegate.control")


def error_response(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if isinstance(exc, LoginRequired) and request.url.path.startswith("/ui"):
        return Redirect("/ui/login", status_code=303)
    if isinstance(exc, ControlError):
        status, code, message = exc.status, exc.code, exc.message
    elif isinstance(exc, HTTPException):
        status, message = exc.status_code, str(exc.detail)
        code = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed"}.get(
            status, "error"
        )
        extra = getattr(exc, "extra", None)
        if status == 400 and extra:
            message = f"{message}: {extra}"
    else:  # a bug: logged here, answered without details (they may hold paths)
        log.error("control API: %s %s failed", request.method, request.url.path, exc_info=exc)
        status, code, message = 500, "internal_error", "internal error"
    headers = {"www-authenticate": "Bearer"} if status == 401 else None
    return Response(m.ErrorOut(error=m.ErrorBody(code=code, message=message)), status_code=status, headers=headers, media_type=MediaType.JSON)


def _globals(env: Environment) -> None:
    env.globals["ago"] = ago
    env.globals["left"] = left


def ago(at: float | None, now: float | None = None) -> str:
    if at is None:
        return "-"
    s = max(0.0, (now or time.time()) - at)
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.0f}m" if s < 7200 else f"{s / 3600:.1f}h"


def left(at: float | None, now: float | None = None) -> str:
    if at is None:
        return "-"
    s = at - (now or time.time())
    return "expired" if s <= 0 else f"{max(1, round(s / 60))}m" if s < 3600 else f"{s / 3600:.0f}h"


# The API docs page works without internet, like the dashboard: Swagger UI's files come from the
# swagger-ui-bundle package and are served here, never from a CDN (Litestar's default).
DOCS_ASSETS = "/api/docs-assets"


def _swagger_dir() -> Path:
    import swagger_ui_bundle  # type: ignore[import-untyped]

    return Path(swagger_ui_bundle.swagger_ui_path)


def _swagger_plugin() -> SwaggerRenderPlugin:
    return SwaggerRenderPlugin(
        js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
        css_url=f"{DOCS_ASSETS}/swagger-ui.css",
        standalone_preset_js_url=f"{DOCS_ASSETS}/swagger-ui-standalone-preset.js",
        favicon=f"<link rel='icon' type='image/png' href='{DOCS_ASSETS}/favicon-32x32.png'>",
    )


def build_control_app(ctx: ControlContext, debug: bool = False) -> Litestar:
    engine = JinjaTemplateEngine(directory=HERE / "templates")
    _globals(engine.engine)
    app = Litestar(
        route_handlers=[
            *CONTROLLERS,
            DashboardController,
            create_static_files_router(path="/ui/static", directories=[HERE / "static"], include_in_schema=False),
            create_static_files_router(path=DOCS_ASSETS, directories=[_swagger_dir()], include_in_schema=False),
        ],
        exception_handlers={Exception: error_response},
        openapi_config=OpenAPIConfig(
            title="tidegate control API",
            version="1",
            description="Services, replicas, scaling decisions, deploys, previews, offers, tokens and logs of a "
            "running `tidegate up`; stop/start/sync actions. Admin tokens only (`tidegate token create NAME --admin`).",
            path="/api/schema",
            render_plugins=[_swagger_plugin(), JsonRenderPlugin()],
            components=Components(
                security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer", description="an admin token")}
            ),
            security=[{"bearer": []}],
        ),
        template_config=TemplateConfig(instance=engine),
        logging_config=None,
        debug=debug,
    )
    app.state.control = ctx
    return app
