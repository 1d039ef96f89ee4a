"""Pure translation between OpenAI chat completions and TGI's `/generate` / `/generate_stream`.

No I/O here (import-linter enforces it): the OpenAI API handler feeds request dicts and TGI
responses in and gets dicts out; the prompt comes from `gateway.api.chat_template`. `eos_token` is
added to the stop sequences. Every field the translation reads is checked for type and range (a
bool is not a number, NaN and infinities are not numbers) so nothing the client sends reaches
TGI unchecked.

`n > 1` is served by `n` independent TGI requests (seeds `seed + i` when a seed is given);
TGI's `best_of` returns one sequence, not `n` choices, so it is not used. Streaming with `n > 1`
is refused (400). The matched trailing stop sequence is trimmed from the text, which TGI keeps.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.api.chat_template import (
    Budget,
    TemplateLimit,
    TemplateRenderError,
    TranslationError,
    normalize_messages,
    render_prompt,
    token_text,
)

__all__ = [
    "DONE", "Budget", "Generation", "SSEParser", "StreamTranslator", "TemplateLimit", "TemplateRenderError",
    "TranslationError", "chat_completion", "choice_count", "finish_reason", "generate_request", "normalize_messages",
    "parse_generation", "render_prompt", "sse", "stop_sequences", "stream_flags", "tgi_parameters", "token_text", "trim_stop",
]

MAX_STOP_SEQUENCES = 16
MAX_NEW_TOKENS = 1 << 24


def _number(value: Any) -> bool:
    """A JSON number: not a bool, and finite (1e400 parses to inf)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def stop_sequences(request: Mapping[str, Any], eos_token: Any) -> list[str]:
    stop = request.get("stop")
    stops: list[str]
    if stop is None:
        stops = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and len(stop) <= MAX_STOP_SEQUENCES and all(isinstance(s, str) for s in stop):
        stops = list(stop)
    else:
        raise TranslationError(f"`stop` must be a string or a list of at most {MAX_STOP_SEQUENCES} strings")
    eos = token_text(eos_token)
    if eos and eos not in stops:
        stops.append(eos)
    return [s for s in stops if s]


def tgi_parameters(request: Mapping[str, Any], eos_token: Any, index: int = 0) -> dict[str, Any]:
    """OpenAI sampling fields -> TGI `parameters` (TGI wants temperature > 0 and 0 < top_p < 1)."""
    params: dict[str, Any] = {"details": True, "stop": stop_sequences(request, eos_token)}
    max_tokens = request.get("max_completion_tokens", request.get("max_tokens"))
    if max_tokens is not None:
        if not _integer(max_tokens) or not 0 < max_tokens <= MAX_NEW_TOKENS:
            raise TranslationError(f"`max_tokens` must be an integer from 1 to {MAX_NEW_TOKENS}")
        params["max_new_tokens"] = max_tokens
    temperature = request.get("temperature")
    if temperature is not None:
        if not _number(temperature) or not 0 <= temperature <= 2:
            raise TranslationError("`temperature` must be a number from 0 to 2")
        if temperature > 0:
            params["temperature"] = float(temperature)
            params["do_sample"] = True
        else:
            params["do_sample"] = False
    top_p = request.get("top_p")
    if top_p is not None:
        if not _number(top_p) or not 0 < top_p <= 1:
            raise TranslationError("`top_p` must be in (0, 1]")
        if top_p < 1:
            params["top_p"] = float(top_p)
    seed = request.get("seed")
    if seed is not None:
        if not _integer(seed) or not 0 <= seed + index < 1 << 64:
            raise TranslationError("`seed` must be an integer from 0 to 2**64-1")
        params["seed"] = seed + index
    return params


def stream_flags(request: Mapping[str, Any]) -> tuple[bool, bool]:
    """(`stream`, `stream_options.include_usage`), checked: booleans and an object or null."""
    stream = request.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise TranslationError("`stream` must be a boolean")
    options = request.get("stream_options")
    if options is None:
        return bool(stream), False
    if not isinstance(options, Mapping):
        raise TranslationError("`stream_options` must be an object")
    usage = options.get("include_usage", False)
    if usage is not None and not isinstance(usage, bool):
        raise TranslationError("`stream_options.include_usage` must be a boolean")
    return bool(stream), bool(usage)


def choice_count(request: Mapping[str, Any]) -> int:
    n = request.get("n", 1)
    n = 1 if n is None else n
    if not _integer(n) or n < 1 or n > 16:
        raise TranslationError("`n` must be an integer from 1 to 16")
    if n > 1 and stream_flags(request)[0]:
        raise TranslationError("`n` > 1 is not supported with `stream: true` for TGI models")
    return n


def generate_request(prompt: str, request: Mapping[str, Any], eos_token: Any, index: int = 0, stream: bool = False) -> dict[str, Any]:
    params = tgi_parameters(request, eos_token, index)
    if not stream:
        params["decoder_input_details"] = True  # gives the prompt's tokens: usage.prompt_tokens
    return {"inputs": prompt, "parameters": params}


def finish_reason(tgi_reason: str | None) -> str:
    return "length" if tgi_reason == "length" else "stop"


def trim_stop(text: str, stops: Sequence[str]) -> str:
    for s in sorted(stops, key=len, reverse=True):
        if s and text.endswith(s):
            return text[: -len(s)]
    return text


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


def parse_generation(response: Any, stops: Sequence[str]) -> Generation:
    """A TGI `/generate` response (object, or the one-element list `/` returns) -> Generation."""
    if isinstance(response, list) and response:
        response = response[0]
    if not isinstance(response, Mapping) or not isinstance(response.get("generated_text"), str):
        raise ValueError("not a TGI generate response")
    details = response.get("details") or {}
    reason = details.get("finish_reason")
    text = response["generated_text"]
    if reason in ("stop_sequence", "eos_token"):
        text = trim_stop(text, stops)
    prefill = details.get("prefill") or []
    return Generation(
        text=text,
        finish_reason=finish_reason(reason),
        prompt_tokens=len(prefill) if prefill else int(details.get("input_length") or 0),
        completion_tokens=int(details.get("generated_tokens") or 0),
    )


def chat_completion(completion_id: str, created: int, model: str, generations: Sequence[Generation]) -> dict[str, Any]:
    prompt = generations[0].prompt_tokens if generations else 0
    completion = sum(g.completion_tokens for g in generations)
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": g.text}, "logprobs": None, "finish_reason": g.finish_reason}
            for i, g in enumerate(generations)
        ],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    }


def sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, allow_nan=False).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


class SSEParser:
    """Bytes of an event stream in, the `data` payload of each complete event out; an event may
    not grow past `max_event` bytes (ValueError)."""

    def __init__(self, max_event: int = 1024 * 1024) -> None:
        self._buf = b""
        self.max_event = max_event

    def feed(self, chunk: bytes) -> list[str]:
        self._buf += chunk.replace(b"\r\n", b"\n")
        if len(self._buf) > self.max_event and b"\n\n" not in self._buf:
            raise ValueError(f"an event of the stream is over {self.max_event} bytes")
        out: list[str] = []
        while True:
            end = self._buf.find(b"\n\n")
            if end == -1:
                return out
            event, self._buf = self._buf[:end], self._buf[end + 2 :]
            data = [line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
            if data:
                out.append(b"\n".join(data).decode())


@dataclass
class StreamTranslator:
    """TGI stream events -> OpenAI chat.completion.chunk dicts.

    Text that could be the start of a stop sequence is held back until the next token shows it is
    not; the final event tells whether a stop sequence matched, and then it is trimmed.
    """

    completion_id: str
    created: int
    model: str
    stops: Sequence[str]
    include_usage: bool = False
    _pending: str = ""
    _started: bool = False
    finished: bool = False
    _usage: dict[str, int] = field(default_factory=dict)

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    def start(self) -> list[dict[str, Any]]:
        self._started = True
        return [self._chunk({"role": "assistant", "content": ""})]

    def _holdback(self) -> int:
        """Length of the longest suffix of pending text that is a proper prefix of a stop sequence."""
        best = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self._pending)), best, -1):
                if self._pending.endswith(s[:k]):
                    best = k
                    break
        return best

    def feed(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        if "error" in event and "token" not in event:
            raise ValueError(str(event.get("error")))
        out = [] if self._started else self.start()
        token = event.get("token") or {}
        if not token.get("special") and isinstance(token.get("text"), str):
            self._pending += token["text"]
        details = event.get("details")
        if event.get("generated_text") is not None or details:
            reason = (details or {}).get("finish_reason")
            text = self._pending
            if reason in ("stop_sequence", "eos_token"):
                text = trim_stop(text, self.stops)
            self._pending = ""
            if text:
                out.append(self._chunk({"content": text}))
            out.append(self._chunk({}, finish_reason(reason)))
            self.finished = True
            if self.include_usage:
                generated = int((details or {}).get("generated_tokens") or 0)
                prompt = int((details or {}).get("input_length") or 0)
                usage = {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated}
                out.append({**self._chunk({}), "choices": [], "usage": usage})
            return out
        keep = self._holdback()
        emit = self._pending[: len(self._pending) - keep]
        self._pending = self._pending[len(emit) :]
        if emit:
            out.append(self._chunk({"content": emit}))
        return out
