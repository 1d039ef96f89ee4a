"""Chat templates, rendered in jinja2's immutable sandbox under a budget: messages in, prompt out.

Pure (import-linter enforces it): the clock is injected through `Budget`. The template sees
`messages` (roles and text only), `add_generation_prompt=True`, `raise_exception`, and - unlike
dstack - `bos_token`/`eos_token`, each a string or the `{"content": ...}` mapping
tokenizer_config.json has.

`BudgetedSandbox` intercepts `*`, `**` and `+` to refuse results over the output cap before they
are built, checks the clock at every call, attribute and item access, and the output is counted
as it is generated. It cannot interrupt a loop that makes no call (jinja2 has no hook per
iteration), so the gateway runs it in worker processes it can kill (`gateway.api.render`); the budget
makes most hostile templates end on their own, cleanly, without losing a worker.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateError as JinjaTemplateError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment


class TranslationError(Exception):
    """The request cannot be translated; the message is shown to the client (400)."""


class TemplateRenderError(TranslationError):
    pass


class TemplateLimit(TemplateRenderError):
    """The template went over its time or output budget."""


@dataclass
class Budget:
    """How long (by `clock`) and how much output a render may take; `clock` is injected so this
    module stays pure (the renderer passes `time.monotonic`)."""

    max_output: int
    seconds: float
    clock: Callable[[], float]
    deadline: float = 0.0

    def start(self) -> None:
        self.deadline = self.clock() + self.seconds

    def check_time(self) -> None:
        if self.deadline and self.clock() > self.deadline:
            raise TemplateLimit(f"chat template took over {self.seconds:g} s")

    def check_size(self, size: int) -> None:
        if size > self.max_output:
            raise TemplateLimit(f"chat template output over {self.max_output} bytes")


def _size(value: Any) -> int:
    return len(value) if isinstance(value, str | bytes | list | tuple) else 0


class BudgetedSandbox(ImmutableSandboxedEnvironment):
    """jinja2's immutable sandbox with the render's `Budget` checked on every operation it sees."""

    intercepted_binops = frozenset({"*", "**", "+"})
    budget: Budget | None = None

    def call_binop(self, context: Context, op: str, left: Any, right: Any) -> Any:
        budget = self.budget
        if budget is not None:
            budget.check_time()
            if op == "*" and isinstance(left, int | str | list | tuple) and isinstance(right, int | str | list | tuple):
                count = right if isinstance(right, int) else left if isinstance(left, int) else 1
                budget.check_size(max(_size(left), _size(right)) * max(int(count), 0))
            elif op == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
                budget.check_size(int(right * math.log2(abs(left)) / 8))
            elif op == "+":
                budget.check_size(_size(left) + _size(right))
        return super().call_binop(context, op, left, right)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        if __self.budget is not None:
            __self.budget.check_time()
        return super().call(__context, __obj, *args, **kwargs)

    def getattr(self, obj: Any, attribute: str) -> Any:
        if self.budget is not None:
            self.budget.check_time()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        if self.budget is not None:
            self.budget.check_time()
        return super().getitem(obj, argument)


def _raise_exception(message: str) -> None:
    raise TemplateRenderError(message)


@functools.lru_cache(maxsize=64)
def _compile(template: str) -> Any:
    env = BudgetedSandbox(trim_blocks=True, lstrip_blocks=True)
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


def render_prompt(template: str, messages: Any, bos_token: Any = None, eos_token: Any = None, budget: Budget | None = None) -> str:
    """The prompt for `messages`; with a `budget`, `TemplateLimit` past its time or output size."""
    try:
        compiled = _compile(template)
    except JinjaTemplateError as e:
        raise TemplateRenderError(f"chat template does not compile: {e}") from e
    except RecursionError as e:
        raise TemplateRenderError("chat template nested too deeply") from e
    variables = {
        "messages": normalize_messages(messages),
        "add_generation_prompt": True,
        "bos_token": token_text(bos_token) or "",
        "eos_token": token_text(eos_token) or "",
    }
    env: BudgetedSandbox = compiled.environment
    env.budget = budget
    try:
        if budget is None:
            return str(compiled.render(**variables))
        budget.start()
        parts: list[str] = []
        size = 0
        for piece in compiled.generate(**variables):
            size += len(piece)
            budget.check_size(size)
            budget.check_time()
            parts.append(piece)
        return "".join(parts)
    except TranslationError:
        raise
    except JinjaTemplateError as e:
        raise TemplateRenderError(f"chat template failed: {e}") from e
    except (RecursionError, OverflowError, MemoryError, ValueError, TypeError, ArithmeticError) as e:
        raise TemplateRenderError(f"chat template failed: {type(e).__name__}") from e
    finally:
        env.budget = None
