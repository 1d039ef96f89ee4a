"""The dashboard (`/ui/`): server-rendered pages, live fragments over SSE, a login form for the cookie.

The pages are Jinja templates rendered from the same `ControlPlane` answers the API gives. Live
updates: the page opens an EventSource on `…/events`; every couple of seconds the server renders
the live part again and sends it (only when it changed) as a `fragment` event, which the page's
few lines of JavaScript (static/app.js, shipped in the package) put in place. No reload, no build
step, no CDN.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlsplit

from litestar import Controller, Request, get, post
from litestar.datastructures import Cookie
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath
from litestar.response import Redirect, ServerSentEvent, ServerSentEventMessage, Template

from gateway.access.tokens import TokenScope
from reconciler.control.api import PLANE
from reconciler.control.auth import COOKIE, context, page_guard, presented_token
from reconciler.control.chart import rps_chart
from reconciler.control.plane import ControlPlane

LIVE_EVERY = 2.0  # seconds between two renders of a live fragment


@dataclass(frozen=True)
class LoginForm:
    token: str


def is_admin(request: Request[Any, Any, Any]) -> bool:
    token, _ = presented_token(request)
    return context(request).tokens.scope_of(token, time.monotonic()) is TokenScope.ADMIN


def _render(request: Request[Any, Any, Any], name: str, **values: Any) -> str:
    engine = request.app.template_engine
    assert engine is not None
    return str(engine.get_template(name).render(**values))


def overview_values(plane: ControlPlane) -> dict[str, Any]:
    return {"ov": plane.overview(), "now": time.time()}


def service_values(plane: ControlPlane, name: str) -> dict[str, Any]:
    detail = plane.service(name)
    now = time.time()
    return {"d": detail, "now": now, "chart": rps_chart(detail.series, detail.scaling, now)}


async def _live(render: Callable[[], str], stopping: threading.Event) -> AsyncIterator[ServerSentEventMessage]:
    last = None
    while not stopping.is_set():
        html = await asyncio.to_thread(render)
        if html != last:
            # One line: SSE data lines end at a newline, and HTML does not care.
            yield ServerSentEventMessage(data=" ".join(html.split("\n")), event="fragment")
            last = html
        await asyncio.sleep(LIVE_EVERY)


class DashboardController(Controller):
    path = "/ui"
    include_in_schema = False
    dependencies = PLANE

    @get("/", guards=[page_guard], sync_to_thread=True)
    def overview(self, request: Request[Any, Any, Any], plane: NamedDependency[ControlPlane]) -> Template:
        return Template("overview.html", context={**overview_values(plane), "admin": is_admin(request)})

    @get("/events", guards=[page_guard])
    async def overview_events(self, request: Request[Any, Any, Any], plane: NamedDependency[ControlPlane]) -> ServerSentEvent:
        return ServerSentEvent(_live(lambda: _render(request, "_overview.html", **overview_values(plane)), context(request).stopping))

    @get("/services/{name:str}", guards=[page_guard], sync_to_thread=True)
    def service(self, request: Request[Any, Any, Any], plane: NamedDependency[ControlPlane], name: FromPath[str]) -> Template:
        values = service_values(plane, name)
        return Template("service.html", context={**values, "admin": is_admin(request)})

    @get("/services/{name:str}/events", guards=[page_guard])
    async def service_events(self, request: Request[Any, Any, Any], plane: NamedDependency[ControlPlane], name: FromPath[str]) -> ServerSentEvent:
        await asyncio.to_thread(plane.service, name)  # 404 before streaming
        return ServerSentEvent(_live(lambda: _render(request, "_service.html", **service_values(plane, name)), context(request).stopping))

    @get("/login")
    async def login_form(self) -> Template:
        return Template("login.html", context={"error": None})

    @post("/login", status_code=303)
    async def login(
        self, request: Request[Any, Any, Any], data: Annotated[LoginForm, Body(media_type=RequestEncodingType.URL_ENCODED)]
    ) -> Redirect | Template:
        origin = request.headers.get("origin")
        if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
            return Template("login.html", context={"error": "cross-site login refused"}, status_code=403)
        token = data.token.strip()
        scope = context(request).tokens.scope_of(token, time.monotonic())
        if scope is not TokenScope.ADMIN:
            error = "not an admin token" if scope else "unknown token"
            return Template("login.html", context={"error": error}, status_code=401)
        cookie = Cookie(key=COOKIE, value=token, httponly=True, samesite="strict", path="/", max_age=12 * 3600)
        return Redirect("/ui/", status_code=303, cookies=[cookie])

    @post("/logout", status_code=303)
    async def logout(self) -> Redirect:
        return Redirect("/ui/login", status_code=303, cookies=[Cookie(key=COOKIE, value="", path="/", max_age=0, httponly=True, samesite="strict")])
