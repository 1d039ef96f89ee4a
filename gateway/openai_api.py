"""The OpenAI-compatible API (`/v1/...` on `gateway.<domain>` and on the bare gateway address).

Requests are routed by their `model` field to the service whose config maps that model. For
`format: openai` the request is passed through to `<prefix>/chat/completions` (and `completions`,
`embeddings`) byte for byte; for `format: tgi` it is translated by the pure `gateway.tgi` to
`/generate` or `/generate_stream` and the answer translated back. Every error here is in OpenAI's
`{"error": {"message", "type", "code"}}` shape, and a token is always required.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import TYPE_CHECKING, Any

from gateway import tgi
from gateway.asgi import ClientGone, Receive, Scope, Send, send_json
from gateway.balancer import has_ready
from gateway.proxy import relay_response, request_head
from gateway.templates import TemplateUnavailable
from gateway.upstream_client import Response, UpstreamError
from tidegate.routes import ModelFormat, ServiceRoute

if TYPE_CHECKING:
    from gateway.core import Gateway

PASSTHROUGH = {"/v1/chat/completions", "/v1/completions", "/v1/embeddings"}


def list_models(gw: Gateway) -> dict[str, Any]:
    data = [
        {"id": route.model.name, "object": "model", "created": 0, "owned_by": route.name}
        for route in gw.table.snapshot.services.values()
        if route.model is not None and (has_ready(route.upstreams) or route.min_replicas == 0)
    ]
    return {"object": "list", "data": data}


async def handle(gw: Gateway, scope: Scope, receive: Receive, send: Send, path: str) -> None:
    from gateway.core import GatewayError

    gw.check_token(scope)
    method = scope["method"]
    if path in ("/v1/models", "/v1/models/") and method == "GET":
        await send_json(send, 200, list_models(gw))
        return
    if path.startswith("/v1/models/") and method == "GET":
        name = path[len("/v1/models/") :]
        found = [m for m in list_models(gw)["data"] if m["id"] == name]
        if not found:
            raise GatewayError(404, f"model {name!r} not found", code="model_not_found")
        await send_json(send, 200, found[0])
        return
    if path not in PASSTHROUGH or method != "POST":
        raise GatewayError(404, f"no API route {method} {path}", code="not_found")
    body = await gw.read_request_body(scope, receive) or b""
    try:
        request = json.loads(body)
    except ValueError as e:
        raise GatewayError(400, "request body is not valid JSON") from e
    if not isinstance(request, dict) or not isinstance(request.get("model"), str):
        raise GatewayError(400, "`model` is required", code="missing_model")
    route = gw.table.by_model.get(request["model"])
    if route is None or route.model is None:
        raise GatewayError(404, f"model {request['model']!r} not found", code="model_not_found")
    started = time.perf_counter()
    st = gw.stats.service(route.name)
    st.begin(time.monotonic())
    status = 500
    try:
        route, waited = await gw.ready_route(route, st, receive)
        extra = [(b"x-tidegate-cold-start", f"{waited:.3f}".encode())] if waited is not None else []
        if route.model is None:
            raise GatewayError(404, f"model {request['model']!r} not found", code="model_not_found")
        if route.model.format is ModelFormat.OPENAI:
            status = await _passthrough(gw, route, scope, receive, send, path, body, extra)
        elif path == "/v1/chat/completions":
            status = await _tgi_chat(gw, route, request, send, extra)
        else:
            raise GatewayError(400, f"{path} is not available for TGI models; use /v1/chat/completions", code="unsupported")
    except GatewayError as e:
        status = e.status
        raise
    except ClientGone:
        status = 499
    finally:
        st.end(status, time.perf_counter() - started)
        gw._access(scope, route.name, path, status, started)


async def _passthrough(
    gw: Gateway, route: ServiceRoute, scope: Scope, receive: Receive, send: Send, path: str, body: bytes, extra: list[tuple[bytes, bytes]]
) -> int:
    assert route.model is not None
    prefix = route.model.prefix.rstrip("/")
    headers = request_head(scope, gw._gateway_host, route.forward_auth)
    target = (prefix + path[len("/v1") :]).encode("latin-1")
    query: bytes = scope.get("query_string", b"")
    if query:
        target += b"?" + query
    upstream, resp = await gw.open_upstream(route, "POST", target, headers, body)
    try:
        await relay_response(resp, receive, send, extra)
        return resp.status
    finally:
        resp.release()
        gw.balancer.release(upstream)


async def _upstream_failure(resp: Response) -> Exception:
    from gateway.core import GatewayError

    text = (await resp.read()).decode("utf-8", "replace")
    try:
        message = str(json.loads(text).get("error", text))
    except (ValueError, AttributeError):
        message = text
    if 400 <= resp.status < 500:
        return GatewayError(400, f"the model server rejected the request: {message}", code="upstream_rejected")
    return GatewayError(502, f"the model server failed ({resp.status}): {message}", "upstream_error", "upstream_failed")


async def _tgi_chat(gw: Gateway, route: ServiceRoute, request: dict[str, Any], send: Send, extra: list[tuple[bytes, bytes]]) -> int:
    from gateway.core import GatewayError

    assert route.model is not None
    try:
        template = await gw.templates.resolve(route.model)
    except TemplateUnavailable as e:
        raise GatewayError(503, str(e), "service_unavailable", "chat_template_unavailable") from e
    try:
        n = tgi.choice_count(request)
        prompt = tgi.render_prompt(template.template, request.get("messages"), template.bos_token, template.eos_token)
        stops = tgi.stop_sequences(request, template.eos_token)
        payloads = [tgi.generate_request(prompt, request, template.eos_token, i, bool(request.get("stream"))) for i in range(n)]
    except tgi.TranslationError as e:
        raise GatewayError(400, str(e), code="invalid_request") from e
    model = request["model"]
    cid = "chatcmpl-" + uuid.uuid4().hex[:24]
    created = int(time.time())
    headers = b"content-type: application/json\r\n"

    if request.get("stream"):
        body = json.dumps(payloads[0]).encode()
        upstream, resp = await gw.open_upstream(route, "POST", b"/generate_stream", headers, body)
        try:
            if resp.status != 200:
                raise await _upstream_failure(resp)
            include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
            translator = tgi.StreamTranslator(cid, created, model, stops, include_usage)
            parser = tgi.SSEParser()
            await send({
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"), *extra],
            })
            first = tgi.sse(translator.start()[0])
            await send({"type": "http.response.body", "body": first, "more_body": True})
            try:
                while data := await resp.read_chunk():
                    out = b""
                    for raw in parser.feed(data):
                        event = json.loads(raw)
                        if "error" in event and not event.get("token"):
                            raise ValueError(str(event["error"]))
                        out += b"".join(tgi.sse(c) for c in translator.feed(event))
                    if out:
                        await send({"type": "http.response.body", "body": out, "more_body": True})
            except (ValueError, UpstreamError, TimeoutError) as e:
                gw.stats.upstream_error(route.name, "stream")
                err = {"error": {"message": f"the model server stream failed: {e}", "type": "upstream_error", "code": None}}
                await send({"type": "http.response.body", "body": tgi.sse(err), "more_body": True})
            await send({"type": "http.response.body", "body": tgi.DONE, "more_body": False})
            return 200
        finally:
            resp.release()
            gw.balancer.release(upstream)

    async def one(payload: dict[str, Any]) -> tgi.Generation:
        upstream, resp = await gw.open_upstream(route, "POST", b"/generate", headers, json.dumps(payload).encode())
        try:
            if resp.status != 200:
                raise await _upstream_failure(resp)
            try:
                return tgi.parse_generation(json.loads(await resp.read()), stops)
            except ValueError as e:
                raise GatewayError(502, "the model server's answer is not a TGI response", "upstream_error", "bad_upstream_response") from e
        finally:
            resp.release()
            gw.balancer.release(upstream)

    generations = await asyncio.gather(*(one(p) for p in payloads))
    await send_json(send, 200, tgi.chat_completion(cid, created, model, generations), extra)
    return 200
