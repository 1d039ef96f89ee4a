"""Header rules and byte pumping between a client (ASGI) and a replica.

Hop-by-hop headers (RFC 9110 7.6.1, plus any the Connection header names) are dropped both
ways, `X-Forwarded-For/-Proto/-Host` are set, and the client's Authorization header stays here
unless the service opted in: a replica never learns users' tokens. HTTP responses come from
`gateway.upstream.client` and are relayed chunk by chunk as they arrive, so SSE reaches the client
as the replica emits it; WebSockets go through aiohttp.

A replica failing mid-answer is a 502 (504 for a timeout) while nothing was sent to the client,
and a cut connection (`ResponseAborted`) once the response has started. WebSocket close codes
that must never appear on the wire (RFC 6455 7.4.1: 1005, 1006, 1015, and anything outside the
assignable ranges) are replaced: 1001 when the client went away, 1011 when the replica did.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Protocol

import aiohttp

from gateway.asgi import Receive, Scope, Send
from gateway.errors import GatewayError, ResponseAborted, UpstreamError
from gateway.upstream.response import Response

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Not hop-by-hop, but recomputed by us or by the client for the upstream request (the whole body
# goes out at once, so a client's Expect: 100-continue has been answered already).
_REQUEST_DROP = HOP_BY_HOP | {
    b"host", b"content-length", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"expect"
}
_RESPONSE_DROP = HOP_BY_HOP
class BodyRewrite(Protocol):
    """Changes a response's bytes on the way (gateway.api.model_names.ModelRename)."""

    def whole(self, body: bytes) -> bytes: ...
    def feed(self, chunk: bytes) -> bytes: ...
    def flush(self) -> bytes: ...


# Small enough to read whole and send in one message (fewer event-loop turns per request).
SMALL_BODY = 256 * 1024


def _connection_tokens(raw: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    names: set[bytes] = set()
    for k, v in raw:
        if k.lower() == b"connection":
            names.update(t.strip().lower() for t in v.split(b","))
    return frozenset(names)


def _forwarded(scope: Scope, host: str, forward_auth: bool) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The client's headers that go on, and the X-Forwarded-For value."""
    raw: list[tuple[bytes, bytes]] = scope["headers"]
    drop = _REQUEST_DROP
    extra: frozenset[bytes] = frozenset()
    for k, _ in raw:
        if k == b"connection":
            extra = _connection_tokens(raw)
            break
    out: list[tuple[bytes, bytes]] = []
    prior_xff = b""
    for k, v in raw:
        if k in drop or k in extra:
            if k == b"x-forwarded-for":
                prior_xff = v
            continue
        if k == b"authorization" and not forward_auth:
            continue
        out.append((k, v))
    client = scope.get("client")
    client_ip = client[0].encode("latin-1") if client else b""
    return out, (prior_xff + b", " + client_ip if prior_xff else client_ip)


def request_head(scope: Scope, host: str, forward_auth: bool) -> bytes:
    """The forwarded request's header lines (`name: value\\r\\n` each, no Host/Content-Length)."""
    kept, xff = _forwarded(scope, host, forward_auth)
    lines = [k + b": " + v + b"\r\n" for k, v in kept]
    lines.append(
        b"x-forwarded-for: " + xff + b"\r\nx-forwarded-proto: " + scope.get("scheme", "http").encode("latin-1")
        + b"\r\nx-forwarded-host: " + host.encode("latin-1") + b"\r\n"
    )
    return b"".join(lines)


def request_headers(scope: Scope, host: str, forward_auth: bool) -> list[tuple[str, str]]:
    """The same headers as `request_head`, as (name, value) strings for aiohttp (WebSockets)."""
    kept, xff = _forwarded(scope, host, forward_auth)
    out = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in kept]
    out.append(("X-Forwarded-For", xff.decode("latin-1")))
    out.append(("X-Forwarded-Proto", scope.get("scheme", "http")))
    out.append(("X-Forwarded-Host", host))
    return out


def response_headers(raw: list[tuple[bytes, bytes]], extra: Iterable[tuple[bytes, bytes]] = ()) -> list[tuple[bytes, bytes]]:
    """The replica's headers (names lower-cased already) less hop-by-hop ones, plus `extra`."""
    named: frozenset[bytes] = frozenset()
    for k, _ in raw:
        if k == b"connection":
            named = _connection_tokens(raw)
            break
    drop = _RESPONSE_DROP
    out = [(k, v) for k, v in raw if k not in drop and k not in named]
    out.extend(extra)
    return out


def upstream_failure(e: UpstreamError | TimeoutError, service: str) -> GatewayError:
    if isinstance(e, TimeoutError):
        return GatewayError(504, f"replica of {service!r} timed out", "upstream_error", "upstream_timeout")
    return GatewayError(502, f"replica of {service!r} failed: {e}", "upstream_error", "upstream_failed")


async def relay_response(
    resp: Response, receive: Receive, send: Send, extra: Iterable[tuple[bytes, bytes]] = (), service: str = "", watched: bool = False,
    rewrite: BodyRewrite | None = None,
) -> None:
    """Send the replica's response to the client: whole when small, else chunk by chunk
    (`rewrite`: changed on the way, its Content-Length recomputed or dropped for chunked).

    While streaming, a client hanging up stops the reading of the replica (for a model server
    that frees the slot instead of generating for nobody). `watched`: the server cancels this
    request when its client goes (`server.py`); otherwise a watcher task notices it between chunks.
    """
    headers = response_headers(resp.headers, extra)
    length = resp.content_length
    if rewrite is not None:
        headers = [(k, v) for k, v in headers if k != b"content-length"]
    try:
        if resp.at_eof or (length is not None and length <= SMALL_BODY):
            body = await resp.read()
            if rewrite is not None:
                body = rewrite.whole(body)
                headers.append((b"content-length", b"%d" % len(body)))
            await send({"type": "http.response.start", "status": resp.status, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        first = await resp.read_chunk()
    except (UpstreamError, TimeoutError) as e:
        raise upstream_failure(e, service) from e
    await send({"type": "http.response.start", "status": resp.status, "headers": headers})
    try:
        if resp.at_eof:  # a short stream that arrived at once needs no watcher task
            body = first if rewrite is None else rewrite.whole(first)
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        await _stream(resp, receive, send, first, watched, rewrite)
    except (UpstreamError, TimeoutError) as e:
        raise ResponseAborted(f"{type(e).__name__}: {e}") from e


async def _stream(
    resp: Response, receive: Receive, send: Send, first: bytes, watched: bool, rewrite: BodyRewrite | None = None
) -> None:
    watcher = None if watched else asyncio.ensure_future(wait_disconnect(receive))
    try:
        if rewrite is not None:
            first = rewrite.feed(first)
        if first:
            await send({"type": "http.response.body", "body": first, "more_body": True})
        while True:
            chunk = await resp.read_chunk()
            if not chunk:
                break
            if watcher is not None and watcher.done():
                resp.close()
                return
            if rewrite is not None:
                chunk = rewrite.feed(chunk)
                if not chunk:
                    continue
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        last = rewrite.flush() if rewrite is not None else b""
        await send({"type": "http.response.body", "body": last, "more_body": False})
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher


async def wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def wire_close_code(code: object, fallback: int) -> int:
    """A close code that may be sent in a Close frame (RFC 6455 7.4): else `fallback`."""
    if not isinstance(code, int) or isinstance(code, bool):
        return fallback
    if (1000 <= code <= 1014 and code not in (1004, 1005, 1006)) or 3000 <= code <= 4999:
        return code
    return fallback


async def relay_websocket(scope: Scope, receive: Receive, send: Send, upstream: aiohttp.ClientWebSocketResponse) -> None:
    """Pump frames both ways until either side closes."""

    async def client_to_upstream() -> None:
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.receive":
                if message.get("bytes") is not None:
                    await upstream.send_bytes(message["bytes"])
                elif message.get("text") is not None:
                    await upstream.send_str(message["text"])
            elif kind == "websocket.disconnect":
                # An abrupt client disconnect arrives as 1006, which no endpoint may send.
                await upstream.close(code=wire_close_code(message.get("code", 1000), 1001))
                return

    async def upstream_to_client() -> None:
        async for msg in upstream:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await send({"type": "websocket.send", "text": msg.data})
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await send({"type": "websocket.send", "bytes": msg.data})
            else:
                break
        code = upstream.close_code
        await send({"type": "websocket.close", "code": 1000 if code is None else wire_close_code(code, 1011)})

    tasks = [asyncio.ensure_future(client_to_upstream()), asyncio.ensure_future(upstream_to_client())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await upstream.close()
