#!/usr/bin/env python3
"""A tiny server speaking Hugging Face TGI's protocol, standard library only, for local examples.

It implements `POST /generate` and `POST /generate_stream` as TGI documents them (request
`{"inputs", "parameters": {max_new_tokens, temperature, top_p, stop, seed, details,
decoder_input_details, return_full_text, do_sample, ...}}`; response `generated_text` plus
`details` with `finish_reason` in `length | eos_token | stop_sequence`, `generated_tokens`, `seed`,
`prefill`, `tokens`; the stream as SSE `data:` events carrying one `token` each and, on the last,
`generated_text` and `details`), and `GET /health` and `GET /info`.

Its "model" is deterministic: it echoes `inputs` back one whitespace-delimited token at a time, then
emits the end-of-sequence token `</s>` (special, not part of `generated_text`). A matched stop
sequence stays in the text, as in TGI. Validation errors are 422 `{"error", "error_type"}`.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from _http import JsonHandler, listen_parser, serve

TOKEN_RE = re.compile(r"\s*\S+")
EOS = "</s>"
EOS_ID = 2


def token_id(text: str) -> int:
    return 3 + sum(text.encode()) % 32000


def generate(inputs: str, params: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """The generated token dicts and TGI's finish_reason."""
    max_new = int(params.get("max_new_tokens") or 100)
    stops = [s for s in (params.get("stop") or []) if isinstance(s, str) and s]
    out: list[dict[str, Any]] = []
    text = ""
    for piece in TOKEN_RE.findall(inputs):
        if len(out) >= max_new:
            return out, "length"
        out.append({"id": token_id(piece), "text": piece, "logprob": -0.1, "special": False})
        text += piece
        if any(text.endswith(s) or s in piece for s in stops):
            return out, "stop_sequence"
    if len(out) >= max_new:
        return out, "length"
    out.append({"id": EOS_ID, "text": EOS, "logprob": -0.01, "special": True})
    return out, "eos_token"


def validate(body: Any) -> str | None:
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), str):
        return "`inputs` must be a string"
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        return "`parameters` must be an object"
    temp = params.get("temperature")
    if temp is not None and temp <= 0:
        return "`temperature` must be strictly positive"
    top_p = params.get("top_p")
    if top_p is not None and not 0 < top_p < 1:
        return "`top_p` must be > 0.0 and < 1.0"
    mnt = params.get("max_new_tokens")
    if mnt is not None and (not isinstance(mnt, int) or mnt <= 0):
        return "`max_new_tokens` must be strictly positive"
    stop = params.get("stop") or []
    if not isinstance(stop, list) or len(stop) > 4:
        return "`stop` supports up to 4 stop sequences"
    if body.get("stream") is not None and not isinstance(body.get("stream"), bool):
        return "`stream` must be a boolean"
    return None


class Handler(JsonHandler):
    server_version = "tgi-example/1.0"
    model_id = "example/tgi-model"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/health":
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/info":
            self._json(200, {
                "model_id": self.model_id, "model_sha": None, "model_dtype": "torch.float16",
                "model_device_type": "cpu", "model_pipeline_tag": "text-generation",
                "max_concurrent_requests": 128, "max_best_of": 2, "max_stop_sequences": 4,
                "max_input_tokens": 4095, "max_total_tokens": 4096, "validation_workers": 2,
                "version": "2.0.0-example", "router": "text-generation-router",
            })
        else:
            self._json(404, {"error": f"no route {path}", "error_type": "not_found"})

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"null")
        except ValueError:
            self._json(422, {"error": "body is not JSON", "error_type": "validation"})
            return
        if path not in ("/generate", "/generate_stream", "/"):
            self._json(404, {"error": f"no route {path}", "error_type": "not_found"})
            return
        problem = validate(body)
        if problem:
            self._json(422, {"error": f"Input validation error: {problem}", "error_type": "validation"})
            return
        params = body.get("parameters") or {}
        tokens, finish = generate(body["inputs"], params)
        text = "".join(t["text"] for t in tokens if not t["special"])
        if params.get("return_full_text"):
            text = body["inputs"] + text
        seed = params.get("seed")
        if path == "/generate_stream" or (path == "/" and body.get("stream")):
            self._stream(body, tokens, finish, text, seed)
            return
        result: dict[str, Any] = {"generated_text": text}
        if params.get("details"):
            details: dict[str, Any] = {
                "finish_reason": finish, "generated_tokens": len(tokens), "seed": seed,
                "prefill": [], "tokens": tokens,
            }
            if params.get("decoder_input_details"):
                details["prefill"] = [
                    {"id": token_id(p), "text": p, "logprob": None} for p in TOKEN_RE.findall(body["inputs"])
                ]
            result["details"] = details
        self._json(200, [result] if path == "/" else result)

    def _stream(self, body: dict[str, Any], tokens: list[dict[str, Any]], finish: str, text: str, seed: Any) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        input_length = len(TOKEN_RE.findall(body["inputs"]))
        for i, tok in enumerate(tokens):
            if self.server.token_delay:  # type: ignore[attr-defined]
                time.sleep(self.server.token_delay)  # type: ignore[attr-defined]
            last = i == len(tokens) - 1
            event = {
                "index": i + 1, "token": tok, "top_tokens": None,
                "generated_text": text if last else None,
                "details": {"finish_reason": finish, "generated_tokens": len(tokens), "seed": seed,
                            "input_length": input_length} if last else None,
            }
            self._chunk(f"data:{json.dumps(event)}\n\n".encode())
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def main() -> None:
    parser = listen_parser(__doc__.splitlines()[0])
    parser.add_argument("--model-id", default="example/tgi-model")
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds between streamed tokens")
    args = parser.parse_args()
    Handler.model_id = args.model_id
    serve(Handler, args, "tgi")


if __name__ == "__main__":
    main()
