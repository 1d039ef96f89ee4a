"""`/v1/chat/completions` for `format: tgi` services: validate, render, call `/generate(_stream)`, translate back.

The decisions are the pure `gateway.api.tgi`; this module does the I/O around them. The chat
template is rendered by `gateway.api.render` (worker processes, bounded in time, output and memory).
A non-streaming answer is read whole to translate it, so it is capped (`max_tgi_response_bytes`);
an error answer is read only up to `ERROR_BODY` bytes for its message. A stream failing midway
ends with an error event and `[DONE]` (the client's response has started by then).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from gateway.api import tgi
from gateway.api.render import RenderBusy
from gateway.api.templates import TemplateUnavailable
from gateway.asgi import BadJSON, Send, loads, send_json
from gateway.errors import GatewayError, UpstreamError
from gateway.forward import Forwarder
from gateway.upstream.response import Response
from tidegate.routes import ServiceRoute

ERROR_BODY = 64 * 1024
JSON_HEADERS = b"content-type: application/json\r\n"


async def _upstream_failure(resp: Response) -> GatewayError:
    try:
        text = (await resp.read(ERROR_BODY)).decode("utf-8", "replace")
    except (UpstreamError, TimeoutError):
        text = "(unreadable answer)"
    try:
        message = str(json.loads(text).get("error", text))
    except (ValueError, AttributeError, RecursionError):
        message = text
    message = message[:1000]
    if 400 <= resp.status < 500:
        return GatewayError(400, f"the model server rejected the request: {message}", code="upstream_rejected")
    return GatewayError(502, f"the model server failed ({resp.status}): {message}", "upstream_error", "upstream_failed")


async def chat(fw: Forwarder, route: ServiceRoute, request: dict[str, Any], send: Send, extra: list[tuple[bytes, bytes]]) -> int:
    assert route.model is not None
    try:
        template = await fw.templates.resolve(route.model)
    except TemplateUnavailable as e:
        raise GatewayError(503, str(e), "service_unavailable", "chat_template_unavailable") from e
    try:
        n = tgi.choice_count(request)
        stream, include_usage = tgi.stream_flags(request)
        stops = tgi.stop_sequences(request, template.eos_token)
        tgi.tgi_parameters(request, template.eos_token)  # every field checked before any rendering
        prompt = await fw.renderer.render(template.template, request.get("messages"), template.bos_token, template.eos_token)
        payloads = [tgi.generate_request(prompt, request, template.eos_token, i, stream) for i in range(n)]
    except tgi.TranslationError as e:
        raise GatewayError(400, str(e), code="invalid_request") from e
    except RenderBusy as e:
        raise GatewayError(503, str(e), "service_unavailable", "renderer_busy", retry_after=1) from e
    model = request["model"]
    cid = "chatcmpl-" + uuid.uuid4().hex[:24]
    created = int(time.time())
    if stream:
        return await _stream(fw, route, payloads[0], send, extra, tgi.StreamTranslator(cid, created, model, stops, include_usage))
    limit = fw.settings.max_tgi_response_bytes

    async def one(payload: dict[str, Any]) -> tgi.Generation:
        body = json.dumps(payload, allow_nan=False).encode()
        upstream, resp = await fw.open_upstream(route, "POST", b"/generate", JSON_HEADERS, body)
        try:
            if resp.status != 200:
                raise await _upstream_failure(resp)
            try:
                return tgi.parse_generation(loads(await resp.read(limit)), stops)
            except (UpstreamError, TimeoutError) as e:
                fw.stats.upstream_error(route.name, "protocol")
                raise GatewayError(502, f"the model server's answer failed: {e}", "upstream_error", "bad_upstream_response") from e
            except (BadJSON, ValueError, TypeError) as e:
                raise GatewayError(502, "the model server's answer is not a TGI response", "upstream_error", "bad_upstream_response") from e
        finally:
            resp.release()
            fw.balancer.release(upstream)

    generations = await asyncio.gather(*(one(p) for p in payloads))
    await send_json(send, 200, tgi.chat_completion(cid, created, model, generations), extra)
    return 200


async def _stream(
    fw: Forwarder, route: ServiceRoute, payload: dict[str, Any], send: Send, extra: list[tuple[bytes, bytes]],
    translator: tgi.StreamTranslator,
) -> int:
    body = json.dumps(payload, allow_nan=False).encode()
    upstream, resp = await fw.open_upstream(route, "POST", b"/generate_stream", JSON_HEADERS, body)
    try:
        if resp.status != 200:
            raise await _upstream_failure(resp)
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
                    event = loads(raw.encode())
                    if not isinstance(event, dict):
                        raise ValueError("an event of the stream is not an object")
                    if "error" in event and not event.get("token"):
                        raise ValueError(str(event["error"])[:1000])
                    out += b"".join(tgi.sse(c) for c in translator.feed(event))
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
        except (ValueError, TypeError, AttributeError, UpstreamError, TimeoutError) as e:
            fw.stats.upstream_error(route.name, "stream")
            err = {"error": {"message": f"the model server stream failed: {e}", "type": "upstream_error", "code": None}}
            await send({"type": "http.response.body", "body": tgi.sse(err), "more_body": True})
        await send({"type": "http.response.body", "body": tgi.DONE, "more_body": False})
        return 200
    finally:
        resp.release()
        fw.balancer.release(upstream)
