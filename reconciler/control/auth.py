"""Who may use the control API and dashboard: admin tokens, from a header or the dashboard's cookie.

Authentication reads the token (`Authorization: Bearer …`, else the `tidegate_session` cookie the
login form sets: HttpOnly so page scripts never see it, SameSite=Strict so other sites' pages never
send it). Authorization is Litestar guards: `admin_guard` on everything, `read_guard` on GETs, which
also lets a loopback client without a token read when the operator turned that on
(`--control-open-reads`, off by default). A browser's state-changing request authenticated by the
cookie must also carry `X-Tidegate-Request` (a header a cross-site form cannot set and a cross-site
script cannot send without a CORS preflight this app never grants) — the CSRF defence on top of
SameSite.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

from gateway.access.tokens import TokenScope, TokenStore, bearer
from reconciler.control.plane import ControlPlane

COOKIE = "tidegate_session"
CSRF_HEADER = "x-tidegate-request"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass
class ControlContext:
    """What the app's handlers and guards share (kept in `app.state.control`)."""

    plane: ControlPlane
    tokens: TokenStore
    open_reads: bool = False  # GETs without a token from loopback
    # Set when `up` shuts down: live streams (dashboard fragments, followed logs) end, so the
    # server's graceful shutdown does not wait on a browser that keeps a page open.
    stopping: threading.Event = field(default_factory=threading.Event)


class LoginRequired(NotAuthorizedException):
    """A dashboard page without a valid session: answered with a redirect to the login form."""


def context(connection: ASGIConnection[Any, Any, Any, Any]) -> ControlContext:
    ctx: ControlContext = connection.app.state.control
    return ctx


def presented_token(connection: ASGIConnection[Any, Any, Any, Any]) -> tuple[str | None, bool]:
    """(token, came from the cookie)."""
    header = connection.headers.get("authorization")
    if header:
        return bearer(header.encode("latin-1")), False
    cookie = connection.cookies.get(COOKIE)
    return (cookie or None), bool(cookie)


def is_loopback(connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
    client = connection.client
    if client is None:
        return False
    try:
        return ipaddress.ip_address(client.host).is_loopback
    except ValueError:
        return False


def _check(connection: ASGIConnection[Any, Any, Any, Any], allow_open_read: bool, page: bool) -> None:
    ctx = context(connection)
    token, from_cookie = presented_token(connection)
    method = connection.scope.get("method", "GET")
    if token is None:
        if allow_open_read and ctx.open_reads and method in SAFE_METHODS and is_loopback(connection):
            return
        raise (LoginRequired if page else NotAuthorizedException)("an admin token is required (Authorization: Bearer <token>)")
    scope = ctx.tokens.scope_of(token, time.monotonic())
    if scope is None:
        raise (LoginRequired if page else NotAuthorizedException)("invalid token")
    if scope is not TokenScope.ADMIN:
        raise PermissionDeniedException("this token has the inference scope; the control API needs an admin token")
    if from_cookie and method not in SAFE_METHODS and connection.headers.get(CSRF_HEADER) != "1":
        raise PermissionDeniedException(f"a cookie-authenticated {method} needs the {CSRF_HEADER}: 1 header")


def admin_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    _check(connection, allow_open_read=False, page=False)


def read_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    _check(connection, allow_open_read=True, page=False)


def page_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    _check(connection, allow_open_read=True, page=True)
