"""What a service file says about routing: the OpenAI model mapping, readiness probes, rate limits.

Why a module of its own: these fields decide how the gateway routes and when a replica is routed,
not what a replica runs (changing them rolls no replica: engine.desired.ROUTING_ONLY_FIELDS), and
the gateway's side of each (`tidegate.routes`) is their target shape. models.py composes them into
`ServiceConfig` and re-exports them, so `reconciler.config.models` stays the one place to import
a config model from.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from jinja2 import TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tidegate.routes import ModelFormat, RateLimit, RateLimitKey

from .durations import Duration, parse_duration
from .errors import located

_FROZEN = ConfigDict(frozen=True, extra="forbid")  # as every config model (models.py)


class ModelSpec(BaseModel):
    """The OpenAI model mapping. `format: openai` may set `prefix` (default `/v1`);
    `format: tgi` may set `chat_template` and `eos_token`."""

    model_config = _FROZEN
    type: Literal["chat"] = "chat"
    name: str = Field(min_length=1)
    format: ModelFormat
    prefix: str | None = None
    chat_template: str | None = None
    eos_token: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"type": "chat", "name": value, "format": ModelFormat.OPENAI}
        if isinstance(value, dict):
            fmt = value.get("format")
            if fmt == ModelFormat.OPENAI:
                for key in ("chat_template", "eos_token"):
                    if value.get(key) is not None:
                        located(
                            f"`{key}` is only for `format: tgi` (openai servers apply their own template)",
                            key,
                        )
            elif fmt == ModelFormat.TGI and value.get("prefix") is not None:
                located("`prefix` is only for `format: openai`", "prefix")
        return value

    @field_validator("chat_template")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            problem = template_syntax_error(value)
            if problem:
                raise ValueError(f"`chat_template` is not a valid Jinja template: {problem}")
        return value

    @model_validator(mode="after")
    def _default_prefix(self) -> ModelSpec:
        if self.format == ModelFormat.OPENAI and self.prefix is None:
            object.__setattr__(self, "prefix", "/v1")
        if self.prefix is not None and not self.prefix.startswith("/"):
            located("`prefix` must start with `/`", "prefix")
        return self


def template_syntax_error(template: str) -> str | None:
    """Compile a chat template as the gateway will (jinja2's immutable sandbox); the error or None.
    Compiling runs nothing, so an untrusted template is safe here."""
    try:
        ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(template)
    except TemplateSyntaxError as e:
        return f"{e.message} (line {e.lineno} of the template)"
    return None


class ProbeMethod(StrEnum):
    GET = "get"
    POST = "post"
    PUT = "put"
    DELETE = "delete"
    PATCH = "patch"
    HEAD = "head"


class ProbeHeader(BaseModel):
    model_config = _FROZEN
    name: str = Field(min_length=1, pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
    value: str


class ProbeSpec(BaseModel):
    """dstack's `probes` item: an HTTP request to the replica's port; it passes on a 2xx answer
    within `timeout`. A replica is routed after `ready_after` passes in a row (one per `interval`)
    and unrouted when one fails."""

    model_config = _FROZEN
    type: Literal["http"] = "http"
    url: str = "/"
    method: ProbeMethod = ProbeMethod.GET
    headers: list[ProbeHeader] = Field(default_factory=list)
    body: str | None = None
    timeout: Duration = 10
    interval: Duration = 15
    ready_after: int = Field(default=1, ge=1, le=100)

    @field_validator("method", mode="before")
    @classmethod
    def _method(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("timeout", "interval", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> int:
        return parse_duration(value)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith("/") or any(c.isspace() for c in value):
            raise ValueError(f"`url` is a path on the replica, starting with `/` (got {value!r})")
        return value

    @model_validator(mode="after")
    def _checks(self) -> ProbeSpec:
        if self.timeout < 1:
            located("`timeout` must be at least 1 second", "timeout")
        if self.interval < 1:
            located("`interval` must be at least 1 second", "interval")
        if self.body is not None and self.method in (ProbeMethod.GET, ProbeMethod.HEAD):
            located(f"a `{self.method}` probe cannot have a `body`; use `method: post`", "body")
        return self


class RateLimitKeySpec(BaseModel):
    """`key: {type: ip_address}` (the default) or `key: {type: header, header: X-API-Key}`."""

    model_config = _FROZEN
    type: RateLimitKey = RateLimitKey.IP_ADDRESS
    header: str | None = Field(default=None, min_length=1, pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

    @model_validator(mode="after")
    def _header(self) -> RateLimitKeySpec:
        if self.type is RateLimitKey.HEADER and self.header is None:
            located("`key: {type: header}` needs `header:` (the header whose value is the key)", "header")
        if self.type is RateLimitKey.IP_ADDRESS and self.header is not None:
            located("`header` is only for `type: header`", "header")
        return self


class RateLimitSpec(BaseModel):
    """dstack's `rate_limits` item: `rps` requests per second (token bucket) with `burst` extra,
    per client key, for request paths under `prefix`."""

    model_config = _FROZEN
    prefix: str = "/"
    rps: float = Field(gt=0)
    burst: int = Field(default=0, ge=0)
    key: RateLimitKeySpec = RateLimitKeySpec()

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"`prefix` must start with `/` (got {value!r})")
        return value

    def to_route(self) -> RateLimit:
        return RateLimit(
            prefix=self.prefix, rps=self.rps, burst=self.burst, key=self.key.type, header=self.key.header
        )
