"""The OpenAI-compatible API (`/v1/...` on `gateway.<domain>` and on the bare gateway address; on
`gateway.<domain>` also without `/v1`, so `OpenAI(base_url="https://gateway.<domain>")` works).

Requests are routed by their `model` field to the service whose config maps that model. For
`format: openai` the request is passed through to `<prefix>/chat/completions` (and `completions`,
`embeddings`) byte for byte, once it is known to be strict JSON (no NaN/Infinity, not nested
beyond the parser); for `format: tgi` it is translated (`gateway.api.tgi_chat`). Every error here is
in OpenAI's `{"error": {"message", "type", "code"}}` shape, and a token is always required.
"""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.api import tgi_chat
from gateway.api.model_names import ModelRename, served_name
from gateway.asgi import BadJSON, ClientGone, Receive, Scope, Send, loads, send_json
from gateway.balancer import has_ready
from gateway.errors import GatewayError
from gateway.forward import COLD_START_HEADER, Forwarder
from gateway.upstream.relay import request_head
from tidegate.routes import ModelFormat, ServiceRoute

PASSTHROUGH = {"/v1/chat/completions", "/v1/completions", "/v1/embeddings"}
# The same routes without `/v1`, served on the gateway host only (a service host is the service's).
_ROOT = frozenset({p[len("/v1") :] for p in PASSTHROUGH} | {"/models", "/models/"})


def at_root(path: str) -> bool:
    return path in _ROOT or path.startswith("/models/")


def list_models(fw: Forwarder) -> dict[str, Any]:
    data = [
        {"id": route.model.name, "object": "model", "created": 0, "owned_by": route.name}
        for route in fw.router.table.snapshot.services.values()
        if route.model is not None and not route.withdrawn and (has_ready(route.upstreams) or route.min_replicas == 0)
    ]
    return {"object": "list", "data": data}


async def handle(fw: Forwarder, scope: Scope, receive: Receive, send: Send, path: str) -> None:
    fw.check_token(scope, path)
    method = scope["method"]
    if path in ("/v1/models", "/v1/models/") and method == "GET":
        await send_json(send, 200, list_models(fw))
        return
    if path.startswith("/v1/models/") and method == "GET":
        name = path[len("/v1/models/") :]
        found = [m for m in list_models(fw)["data"] if m["id"] == name]
        if not found:
            raise GatewayError(404, f"model {name!r} not found", code="model_not_found")
        await send_json(send, 200, found[0])
        return
    if path not in PASSTHROUGH or method != "POST":
        raise GatewayError(404, f"no API route {method} {path}", code="not_found")
    body = await fw.read_request_body(scope, receive) or b""
    try:
        request = loads(body)
    except BadJSON as e:
        raise GatewayError(400, f"request body is not valid JSON: {e}", code="invalid_json") from e
    if not isinstance(request, dict) or not isinstance(request.get("model"), str):
        raise GatewayError(400, "`model` is required", code="missing_model")
    route = fw.router.table.by_model.get(request["model"])
    if route is None or route.model is None:
        raise GatewayError(404, f"model {request['model']!r} not found", code="model_not_found")
    if route.stopped or route.rate_limits:  # the service's own path: its prefix + the API path
        fw.admit(route, scope, route.model.prefix.rstrip("/") + path[len("/v1") :], token=False)
    status = [500]
    fw.watch_disconnect(scope)
    with fw.counted(scope, route.name, path, status) as st:
        try:
            route, waited = await fw.cold.ready_route(route, st, receive)
            extra = [(COLD_START_HEADER, f"{waited:.3f}".encode())] if waited is not None else []
            if route.model is None:
                raise GatewayError(404, f"model {request['model']!r} not found", code="model_not_found")
            if route.model.format is ModelFormat.OPENAI:
                await _passthrough(fw, route, scope, receive, send, path, body, extra, status)
            elif path == "/v1/chat/completions":
                status[0] = await tgi_chat.chat(fw, route, request, send, extra)
            else:
                raise GatewayError(400, f"{path} is not available for TGI models; use /v1/chat/completions", code="unsupported")
        except GatewayError as e:
            status[0] = e.status
            raise
        except ClientGone:
            status[0] = 499
        except asyncio.CancelledError:
            if not fw.cancelled_by_disconnect(scope):
                raise
            status[0] = 499


async def _passthrough(
    fw: Forwarder, route: ServiceRoute, scope: Scope, receive: Receive, send: Send, path: str, body: bytes,
    extra: list[tuple[bytes, bytes]], status: list[int],
) -> None:
    assert route.model is not None
    prefix = route.model.prefix.rstrip("/")
    rename = None
    served = served_name(route)
    if served is not None:  # a preview: the replica serves the model under its own name
        rename = ModelRename(served, route.model.name)
        body = rename.request(loads(body))
    headers = request_head(scope, fw.gateway_host, route.forward_auth)
    target = (prefix + path[len("/v1") :]).encode("latin-1")
    query: bytes = scope.get("query_string", b"")
    if query:
        target += b"?" + query
    await fw.forward(route, scope, receive, send, "POST", target, headers, body, extra, status, rewrite=rename)
