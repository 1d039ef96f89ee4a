"""Small raw-ASGI helpers for the hot path: reading bodies, sending JSON, header access.

The gateway answers from one `@asgi` mount (a normal Litestar route costs ~50-80 us more per
request), so responses are written as raw ASGI messages here.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_SCANNED = "tidegate.headers"
# A contract with the gateway's uvicorn protocol (server.py), which sets WATCHED in every HTTP
# scope: when the client's connection is lost while its request runs, it sets DISCONNECTED and
# cancels the task the app put in CANCEL_ON_DISCONNECT (no watcher task per request needed).
WATCHED = "tidegate.watched"
CANCEL_ON_DISCONNECT = "tidegate.task"
DISCONNECTED = "tidegate.disconnected"


class BodyTooLarge(Exception):
    pass


class ClientGone(Exception):
    pass


class BadJSON(ValueError):
    pass


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of a (lower-case) request header."""
    for k, v in scope["headers"]:
        if k == name:
            return bytes(v)
    return None


def scan(scope: Scope) -> tuple[bytes, bytes | None, bytes | None]:
    """Host, Authorization and Content-Length in one pass over the headers (kept in the scope)."""
    found = scope.get(_SCANNED)
    if found is not None:
        return found  # type: ignore[no-any-return]
    host = b""
    auth = clen = None
    for k, v in scope["headers"]:
        if k == b"host":
            host = v
        elif k == b"authorization":
            auth = v
        elif k == b"content-length":
            clen = v
    found = (host, auth, clen)
    scope[_SCANNED] = found
    return found


def _no_constants(name: str) -> Any:
    raise BadJSON(f"{name} is not JSON")


def loads(body: bytes) -> Any:
    """Strict JSON: no NaN/Infinity literals, and nesting too deep for the parser is an error,
    not a RecursionError escaping as a 500."""
    try:
        return json.loads(body, parse_constant=_no_constants)
    except RecursionError as e:
        raise BadJSON("JSON nested too deeply") from e
    except BadJSON:
        raise
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise BadJSON(str(e)) from e


async def read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def send_bytes(
    send: Send, status: int, body: bytes, content_type: bytes, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"content-length", b"%d" % len(body)), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_json(send: Send, status: int, obj: Any, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    await send_bytes(send, status, json.dumps(obj).encode(), b"application/json", headers)


def error_body(message: str, type_: str, code: str | None) -> dict[str, Any]:
    """Every gateway error uses OpenAI's shape so SDK clients show the message."""
    return {"error": {"message": message, "type": type_, "code": code}}


async def send_error(
    send: Send,
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    code: str | None = None,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    await send_json(send, status, error_body(message, type_, code), headers)
