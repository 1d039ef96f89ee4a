"""Every error the gateway raises on its request path, and how a `GatewayError` is answered.

Kept apart from the modules that raise them so the handlers (`api`, `webhooks`, `forward`)
and the upstream client share one vocabulary without importing each other or the core.
`GatewayError` is the one the client sees: a status and OpenAI's error shape, which SDK clients
show as is. The others are translated to it where the request path catches them.
"""

from __future__ import annotations

from gateway.asgi import Send, send_error


class GatewayError(Exception):
    """Answered as `status` with `{"error": {"message", "type", "code"}}`."""

    def __init__(
        self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.retry_after = retry_after

    def headers(self) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        if self.retry_after is not None:
            out.append((b"retry-after", str(self.retry_after).encode()))
        if self.status == 401:
            out.append((b"www-authenticate", b"Bearer"))
        return out

    async def send(self, send: Send) -> None:
        await send_error(send, self.status, self.message, self.type, self.code, self.headers())


class UpstreamError(Exception):
    """The replica broke the exchange (bad bytes, over a limit, closed mid-response)."""


class ConnectFailed(UpstreamError):
    """No connection could be made; nothing was sent."""


class ResponseAborted(Exception):
    """The replica failed after the client's response had started: the only honest end is to cut
    the client's connection (a complete-looking short body would be a lie). Logged once by the
    gateway; `server.py` keeps uvicorn from logging it again with a traceback."""
