#!/usr/bin/env python3
"""A tiny OpenAI-compatible chat server, standard library only, for the local example services.

It answers `/v1/models`, `/v1/chat/completions` (plain and `stream: true` as SSE),
`/v1/completions`, `/v1/embeddings` and `/health` with deterministic output: the reply to a chat is
`echo: <last user message>`, cut by `max_tokens` (finish_reason `length`) or at the first `stop`
string (finish_reason `stop`). A "token" is one whitespace-separated word with its trailing space.
It exists so that `tidegate` examples and tests run with nothing but `python3`.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Any

from _http import JsonHandler, listen_parser, serve

TOKEN_RE = re.compile(r"\s*\S+\s*|\s+")


def tokens_of(text: str) -> list[str]:
    return TOKEN_RE.findall(text)


def generate(text: str, max_tokens: int | None, stop: list[str]) -> tuple[list[str], str]:
    """Tokens of `text` cut by max_tokens / stop strings, and the OpenAI finish_reason."""
    out: list[str] = []
    produced = ""
    for tok in tokens_of(text):
        if max_tokens is not None and len(out) >= max_tokens:
            return out, "length"
        candidate = produced + tok
        for s in stop:
            at = candidate.find(s)
            if s and at != -1:
                keep = candidate[len(produced) : at]
                if keep:
                    out.append(keep)
                return out, "stop"
        out.append(tok)
        produced = candidate
    return out, "stop"


def content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def as_stop_list(stop: Any) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    return [s for s in stop if isinstance(s, str)]


class Handler(JsonHandler):
    server_version = "openai-example/1.0"
    model_name = "example-model"
    strict_model = False  # answer 404 to another model name, as vLLM and TGI do

    # -- plumbing ---------------------------------------------------------------------------
    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw else {}

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": {"message": message, "type": "invalid_request_error", "code": None}})

    def _sse_start(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _sse(self, obj: Any) -> None:
        payload = obj if isinstance(obj, str) else json.dumps(obj)
        self._chunk(f"data: {payload}\n\n".encode())

    def _sse_end(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    # -- routes -----------------------------------------------------------------------------
    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in ("/health", "/"):
            self._json(200, {"status": "ok"})
        elif path == "/v1/models":
            self._json(
                200,
                {"object": "list", "data": [{"id": self.model_name, "object": "model", "created": 0, "owned_by": "example"}]},
            )
        elif path.startswith("/echo"):
            # Debug helper for proxy tests: shows what the server received.
            self._json(200, {"method": "GET", "path": self.path, "headers": dict(self.headers.items())})
        else:
            self._error(404, f"no route {path}")

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            body = self._body()
        except ValueError:
            self._error(400, "body is not JSON")
            return
        if self.strict_model and isinstance(body, dict) and body.get("model") not in (None, self.model_name):
            self._json(404, {"object": "error", "message": f"The model `{body.get('model')}` does not exist.",
                             "type": "NotFoundError", "param": None, "code": 404})
            return
        if path == "/v1/chat/completions":
            self._chat(body)
        elif path == "/v1/completions":
            self._completion(body)
        elif path == "/v1/embeddings":
            self._embeddings(body)
        elif path.startswith("/echo"):
            self._json(200, {"method": "POST", "path": self.path, "headers": dict(self.headers.items()), "body": body})
        else:
            self._error(404, f"no route {path}")

    def _chat(self, body: dict[str, Any]) -> None:
        messages = body.get("messages") or []
        if not isinstance(messages, list) or not messages:
            self._error(400, "messages must be a non-empty list")
            return
        last_user = next((content_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
        prompt_tokens = sum(len(tokens_of(content_text(m.get("content")))) for m in messages)
        toks, finish = generate(f"echo: {last_user}", body.get("max_tokens"), as_stop_list(body.get("stop")))
        model = body.get("model") or self.model_name
        cid = "chatcmpl-" + hashlib.sha1(json.dumps(messages).encode()).hexdigest()[:12]
        created = int(time.time())
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(toks), "total_tokens": prompt_tokens + len(toks)}
        if body.get("stream"):
            self._sse_start()
            base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
            self._sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
            for tok in toks:
                if self.server.token_delay:  # type: ignore[attr-defined]
                    time.sleep(self.server.token_delay)  # type: ignore[attr-defined]
                self._sse({**base, "choices": [{"index": 0, "delta": {"content": tok}, "finish_reason": None}]})
            self._sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
            if (body.get("stream_options") or {}).get("include_usage"):
                self._sse({**base, "choices": [], "usage": usage})
            self._sse("[DONE]")
            self._sse_end()
            return
        self._json(
            200,
            {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "".join(toks)}, "finish_reason": finish}
                ],
                "usage": usage,
            },
        )

    def _completion(self, body: dict[str, Any]) -> None:
        prompt = body.get("prompt") or ""
        if isinstance(prompt, list):
            prompt = "".join(str(p) for p in prompt)
        toks, finish = generate(f"echo: {prompt}", body.get("max_tokens", 16), as_stop_list(body.get("stop")))
        model = body.get("model") or self.model_name
        created = int(time.time())
        if body.get("stream"):
            self._sse_start()
            for tok in toks:
                self._sse({"id": "cmpl-1", "object": "text_completion", "created": created, "model": model,
                           "choices": [{"index": 0, "text": tok, "finish_reason": None, "logprobs": None}]})
            self._sse({"id": "cmpl-1", "object": "text_completion", "created": created, "model": model,
                       "choices": [{"index": 0, "text": "", "finish_reason": finish, "logprobs": None}]})
            self._sse("[DONE]")
            self._sse_end()
            return
        n_prompt = len(tokens_of(prompt))
        self._json(200, {
            "id": "cmpl-1", "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": "".join(toks), "finish_reason": finish, "logprobs": None}],
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": len(toks), "total_tokens": n_prompt + len(toks)},
        })

    def _embeddings(self, body: dict[str, Any]) -> None:
        inputs = body.get("input") or ""
        items = inputs if isinstance(inputs, list) else [inputs]
        data = []
        for i, item in enumerate(items):
            digest = hashlib.sha256(str(item).encode()).digest()
            data.append({"object": "embedding", "index": i, "embedding": [b / 255.0 for b in digest[:8]]})
        n = sum(len(tokens_of(str(x))) for x in items)
        self._json(200, {"object": "list", "data": data, "model": body.get("model") or self.model_name,
                         "usage": {"prompt_tokens": n, "total_tokens": n}})


def main() -> None:
    parser = listen_parser(__doc__.splitlines()[0])
    parser.add_argument("--model", default="example-model", help="id reported by /v1/models")
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds between streamed tokens")
    parser.add_argument("--strict-model", action="store_true", help="refuse other model names (404, like vLLM)")
    args = parser.parse_args()
    Handler.model_name = args.model
    Handler.strict_model = args.strict_model
    serve(Handler, args, "openai")


if __name__ == "__main__":
    main()
