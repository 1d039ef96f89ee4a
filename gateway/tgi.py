"""Pure translation between OpenAI chat completions and TGI's `/generate` / `/generate_stream`.

No I/O here (import-linter enforces it): the OpenAI API handler feeds request dicts and TGI
responses in and gets dicts out. The chat template is rendered in jinja2's immutable sandbox with
`trim_blocks`/`lstrip_blocks`, `raise_exception`, `add_generation_prompt=True`, and - unlike
dstack - `bos_token`/`eos_token` passed to the template. `eos_token` may be a string or a
`{"content": ...}` mapping (as tokenizer_config.json has it) and is added to the stop sequences.

`n > 1` is served by `n` independent TGI requests (seeds `seed + i` when a seed is given);
TGI's `best_of` returns one sequence, not `n` choices, so it is not used. Streaming with `n > 1`
is refused (400). The matched trailing stop sequence is trimmed from the text, which TGI keeps.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from jinja2 import TemplateError as JinjaTemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment


class TranslationError(Exception):
    """The request cannot be translated; the message is shown to the client (400)."""


class TemplateRenderError(TranslationError):
    pass


def _raise_exception(message: str) -> None:
    raise TemplateRenderError(message)


@functools.lru_cache(maxsize=64)
def _compile(template: str) -> Any:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    return env.from_string(template)


def token_text(token: Any) -> str | None:
    """`"</s>"` or `{"content": "</s>", ...}` -> `"</s>"`."""
    if token is None:
        return None
    if isinstance(token, str):
        return token
    if isinstance(token, Mapping) and isinstance(token.get("content"), str):
        return str(token["content"])
    raise TranslationError(f"a special token must be a string or {{content: ...}}, got {token!r}")


def message_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, Mapping) or part.get("type", "text") != "text" or not isinstance(part.get("text"), str):
                raise TranslationError("only text content parts are supported by TGI models")
            parts.append(part["text"])
        return "".join(parts)
    raise TranslationError("message content must be a string or a list of text parts")


def normalize_messages(messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise TranslationError("`messages` must be a non-empty list")
    out = []
    for m in messages:
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise TranslationError("every message needs a string `role`")
        out.append({"role": m["role"], "content": message_text(m.get("content"))})
    return out


def render_prompt(template: str, messages: Any, bos_token: Any = None, eos_token: Any = None) -> str:
    try:
        compiled = _compile(template)
    except JinjaTemplateError as e:
        raise TemplateRenderError(f"chat template does not compile: {e}") from e
    try:
        return str(
            compiled.render(
                messages=normalize_messages(messages),
                add_generation_prompt=True,
                bos_token=token_text(bos_token) or "",
                eos_token=token_text(eos_token) or "",
            )
        )
    except TranslationError:
        raise
    except JinjaTemplateError as e:
        raise TemplateRenderError(f"chat template failed: {e}") from e


def stop_sequences(request: Mapping[str, Any], eos_token: Any) -> list[str]:
    stop = request.get("stop")
    stops: list[str]
    if stop is None:
        stops = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = list(stop)
    else:
        raise TranslationError("`stop` must be a string or a list of strings")
    eos = token_text(eos_token)
    if eos and eos not in stops:
        stops.append(eos)
    return [s for s in stops if s]


def tgi_parameters(request: Mapping[str, Any], eos_token: Any, index: int = 0) -> dict[str, Any]:
    """OpenAI sampling fields -> TGI `parameters` (TGI wants temperature > 0 and 0 < top_p < 1)."""
    params: dict[str, Any] = {"details": True, "stop": stop_sequences(request, eos_token)}
    max_tokens = request.get("max_completion_tokens", request.get("max_tokens"))
    if max_tokens is not None:
        if not isinstance(max_tokens, int) or max_tokens <= 0:
            raise TranslationError("`max_tokens` must be a positive integer")
        params["max_new_tokens"] = max_tokens
    temperature = request.get("temperature")
    if temperature is not None:
        if not isinstance(temperature, int | float) or temperature < 0:
            raise TranslationError("`temperature` must be a number >= 0")
        if temperature > 0:
            params["temperature"] = float(temperature)
            params["do_sample"] = True
        else:
            params["do_sample"] = False
    top_p = request.get("top_p")
    if top_p is not None:
        if not isinstance(top_p, int | float) or not 0 < top_p <= 1:
            raise TranslationError("`top_p` must be in (0, 1]")
        if top_p < 1:
            params["top_p"] = float(top_p)
    seed = request.get("seed")
    if seed is not None:
        if not isinstance(seed, int):
            raise TranslationError("`seed` must be an integer")
        params["seed"] = seed + index
    return params


def choice_count(request: Mapping[str, Any]) -> int:
    n = request.get("n", 1) or 1
    if not isinstance(n, int) or n < 1 or n > 16:
        raise TranslationError("`n` must be an integer from 1 to 16")
    if n > 1 and request.get("stream"):
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
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


class SSEParser:
    """Bytes of an event stream in, the `data` payload of each complete event out."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[str]:
        self._buf += chunk.replace(b"\r\n", b"\n")
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
