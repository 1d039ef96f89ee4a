"""The control API's controllers (`/api/v1/…`): thin handlers over `ControlPlane`, guarded by scope.

Handlers that read files or run `git` are synchronous and run in a worker thread
(`sync_to_thread=True`), so the gateway's event loop — which also carries the proxy — never blocks.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Annotated, Any

from litestar import Controller, Request, delete, get, post
from litestar.di import NamedDependency, Provide
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody, Parameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from backends.base import Requirements
from reconciler.control import models as m
from reconciler.control.auth import admin_guard, context, read_guard
from reconciler.control.plane import ControlError, ControlPlane
from reconciler.control.tail import new_lines

API = "/api/v1"
FOLLOW_EVERY = 0.5  # seconds between two reads of a followed replica's log


def provide_plane(request: Request[Any, Any, Any]) -> ControlPlane:
    return context(request).plane


PLANE = {"plane": Provide(provide_plane, sync_to_thread=False)}
# The error shape every handler may answer with, documented in the OpenAPI document.
ERRORS = {
    status: ResponseSpec(m.ErrorOut, description=text)
    for status, text in (
        (400, "invalid parameters"),
        (401, "no token, or an unknown one"),
        (403, "not an admin token (or a cookie-authenticated action without X-Tidegate-Request)"),
        (404, "no such service, replica or token"),
        (503, "the state or a backend cannot answer now"),
    )
}


class OverviewController(Controller):
    path = API
    tags = ["services"]
    guards = [read_guard]
    dependencies = PLANE

    @get("/overview", responses=ERRORS, sync_to_thread=True, summary="Everything `tidegate ps` shows: source, services, previews, cost")
    def overview(self, plane: NamedDependency[ControlPlane]) -> m.Overview:
        return plane.overview()

    @get("/previews", responses=ERRORS, sync_to_thread=True, summary="Pull-request previews and the PRs refused one, with reasons")
    def previews(self, plane: NamedDependency[ControlPlane]) -> m.Previews:
        return plane.previews()

    @get("/offers", responses=ERRORS, sync_to_thread=True, summary="Offers of the configured backends for some resources, cheapest first")
    def offers(
        self,
        plane: NamedDependency[ControlPlane],
        gpu: FromQuery[str | None] = None,
        spot_policy: Annotated[str, Parameter(pattern="^(spot|on-demand|auto)$")] = "auto",
        max_price: FromQuery[float | None] = None,
        backend: FromQuery[list[str] | None] = None,
        limit: Annotated[int, Parameter(ge=1, le=500)] = 50,
    ) -> list[m.OfferOut]:
        gpu_req = None
        if gpu:
            from reconciler.config.resources import GpuSpec

            try:
                gpu_req = GpuSpec.model_validate(gpu).to_requirement()
            except ValueError as e:
                raise ControlError(f"gpu: {e}") from e
        requirements = Requirements(
            gpu=gpu_req, spot_policy=spot_policy, max_price=max_price, backends=tuple(backend or ())
        )
        return plane.offers(requirements, limit)

    @post("/sync", responses=ERRORS, guards=[admin_guard], status_code=202, sync_to_thread=True, summary="Fetch and reconcile now (as a push webhook)")
    def sync(self, plane: NamedDependency[ControlPlane]) -> m.ActionResult:
        return plane.sync()


class ServicesController(Controller):
    path = f"{API}/services"
    tags = ["services"]
    guards = [read_guard]
    dependencies = PLANE

    @get("/", responses=ERRORS, sync_to_thread=True, summary="Every service: status, reason, revision, ready/desired, URL, model, cost, rps")
    def list_services(self, plane: NamedDependency[ControlPlane]) -> list[m.ServiceSummary]:
        return plane.services()

    @get("/{name:str}", responses=ERRORS, sync_to_thread=True, summary="One service: replicas, scaling decisions, deploys, plan diff")
    def get_service(self, plane: NamedDependency[ControlPlane], name: FromPath[str]) -> m.ServiceDetail:
        return plane.service(name)

    @get("/{name:str}/logs", responses=ERRORS, sync_to_thread=True, summary="The last lines of a replica (default: the first)")
    def logs(
        self,
        plane: NamedDependency[ControlPlane],
        name: FromPath[str],
        replica: FromQuery[str | None] = None,
        lines: Annotated[int, Parameter(ge=1, le=5000)] = 100,
    ) -> m.LogLines:
        return plane.log_lines(name, replica, lines)

    @get("/{name:str}/logs/stream", responses=ERRORS, summary="Follow a replica's log as server-sent events (one `line` event per line)")
    async def follow_logs(
        self,
        request: Request[Any, Any, Any],
        plane: NamedDependency[ControlPlane],
        name: FromPath[str],
        replica: FromQuery[str | None] = None,
        lines: Annotated[int, Parameter(ge=0, le=5000)] = 100,
    ) -> ServerSentEvent:
        first = await asyncio.to_thread(plane.log_lines, name, replica, max(lines, 1))  # 404 before streaming
        return ServerSentEvent(_follow(plane, name, first, lines, context(request).stopping))

    @post("/{name:str}/stop", responses=ERRORS, guards=[admin_guard], status_code=202, sync_to_thread=True, summary="Stop a service (as `tidegate stop`)")
    def stop(self, plane: NamedDependency[ControlPlane], name: FromPath[str]) -> m.ActionResult:
        return plane.act("stop", name)

    @post("/{name:str}/start", responses=ERRORS, guards=[admin_guard], status_code=202, sync_to_thread=True, summary="Undo stop (as `tidegate start`)")
    def start(self, plane: NamedDependency[ControlPlane], name: FromPath[str]) -> m.ActionResult:
        return plane.act("start", name)


async def _follow(
    plane: ControlPlane, name: str, first: m.LogLines, lines: int, stopping: threading.Event
) -> AsyncIterator[ServerSentEventMessage]:
    seen = first.lines
    for line in seen[-lines:] if lines else []:
        yield ServerSentEventMessage(data=line, event="line")
    window = max(lines, 200)
    while True:
        await asyncio.sleep(FOLLOW_EVERY)
        if stopping.is_set():
            yield ServerSentEventMessage(data="tidegate is shutting down", event="end")
            return
        try:
            current = (await asyncio.to_thread(plane.log_lines, name, first.replica, window)).lines
        except ControlError as e:  # the replica went away: say so and end the stream
            yield ServerSentEventMessage(data=e.message, event="end")
            return
        for line in new_lines(seen, current):
            yield ServerSentEventMessage(data=line, event="line")
        seen = current


class TokensController(Controller):
    path = f"{API}/tokens"
    tags = ["tokens"]
    guards = [admin_guard]
    dependencies = PLANE

    @get("/", responses=ERRORS, sync_to_thread=True, summary="Tokens: names, prefixes, scopes (never the tokens)")
    def list_tokens(self, plane: NamedDependency[ControlPlane]) -> list[m.TokenOut]:
        return plane.tokens()

    @post("/", responses=ERRORS, sync_to_thread=True, summary="Create a token; the response is the only time it is shown")
    def create_token(self, plane: NamedDependency[ControlPlane], data: JSONBody[m.TokenCreate]) -> m.TokenCreated:
        return plane.create_token(data.name, data.admin)

    @delete("/{name:str}", responses=ERRORS, sync_to_thread=True, summary="Revoke a token by name")
    def revoke_token(self, plane: NamedDependency[ControlPlane], name: FromPath[str]) -> None:
        plane.revoke_token(name)


CONTROLLERS = [OverviewController, ServicesController, TokensController]
