"""Who may pass: bearer tokens on services and the API, and whether `/metrics` needs one.

Token verdicts are cached per Authorization header value for `CACHE_SECONDS` (then `TokenStore`
checks again, re-reading tokens.json when it changed) and for at most `CACHE_SIZE` distinct
headers: hashing and comparing against every stored hash costs more than the rest of a small
request.
"""

from __future__ import annotations

import ipaddress
import time
from enum import StrEnum

from gateway.access.tokens import AuthResult, TokenStore
from gateway.asgi import Scope, scan
from gateway.errors import GatewayError

CACHE_SECONDS = 1.0
CACHE_SIZE = 4096


class MetricsAccess(StrEnum):
    AUTO = "auto"  # open on a loopback listener, token elsewhere
    OPEN = "open"
    TOKEN = "token"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name or 0.0.0.0 / :: (every interface): not loopback


def metrics_need_token(access: MetricsAccess, listen_host: str) -> bool:
    """`/metrics` names every service and its traffic: open only where only this machine can ask."""
    if access is MetricsAccess.AUTO:
        return not is_loopback(listen_host)
    return access is MetricsAccess.TOKEN


def auth_error(result: AuthResult) -> GatewayError:
    if result is AuthResult.MISSING:
        return GatewayError(401, "missing bearer token (Authorization: Bearer <token>)", "authentication_error", "missing_api_key")
    return GatewayError(403, "invalid token", "authentication_error", "invalid_api_key")


class Authenticator:
    def __init__(self, tokens: TokenStore) -> None:
        self.tokens = tokens
        self._cache: dict[bytes | None, tuple[AuthResult, str | None]] = {}
        self._until = 0.0

    def forget(self) -> None:
        """Drop cached verdicts (tokens.json changed)."""
        self._cache = {}

    def check(self, scope: Scope) -> str | None:
        """Raise the 401/403 `GatewayError` unless the request carries a valid token; its name."""
        header = scan(scope)[1]
        now = time.monotonic()
        cache = self._cache
        if now >= self._until or len(cache) >= CACHE_SIZE:
            cache = self._cache = {}
            self._until = now + CACHE_SECONDS
        found = cache.get(header)
        if found is None:
            found = cache[header] = self.tokens.identify(header, now)
        if found[0] is not AuthResult.OK:
            raise auth_error(found[0])
        return found[1]
