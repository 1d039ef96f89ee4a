"""The `type: service` file as tidegate understands it: pydantic v2 models with dstack's rules.

What a user writes is normalised here once (env list -> mapping, `port: "8080:8000"` -> mapping,
`replicas: 1..4` -> range, `model: name` -> openai chat model, durations -> seconds) so the rest of
tidegate reads one shape. Defaults follow dstack's ServiceConfiguration. The models are frozen and
accept their own `model_dump()`, so a loaded config round-trips. Fields dstack has but tidegate
does not act on are not modelled; the parser (config/parse.py) reports them as warnings.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from backends.base import Requirements
from tidegate.routes import ModelFormat as ModelFormat  # the formats the gateway serves: one enum

from .durations import DURATION_SCHEMA, Duration, parse_duration
from .errors import located
from .resources import IntRange, ResourcesSpec
from .routing import ModelSpec as ModelSpec
from .routing import ProbeHeader as ProbeHeader
from .routing import ProbeMethod as ProbeMethod
from .routing import ProbeSpec as ProbeSpec
from .routing import RateLimitKeySpec as RateLimitKeySpec
from .routing import RateLimitSpec as RateLimitSpec
from .routing import template_syntax_error as template_syntax_error
from .value_memo import ValidatedMemo

# Nested values most services of a repository repeat, validated once per distinct YAML value
# (config/value_memo.py): `resources:` is most of a file's validation, a chat template compiles.
MEMOS: dict[str, ValidatedMemo[Any]] = {"resources": ValidatedMemo(), "model": ValidatedMemo(), "scaling": ValidatedMemo()}

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9-]{1,40}$")  # dstack's run-name rule
ENV_KEY_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PYTHON_VERSIONS = ("3.9", "3.10", "3.11", "3.12", "3.13")
_FROZEN = ConfigDict(frozen=True, extra="forbid")


class SpotPolicy(StrEnum):
    SPOT = "spot"
    ON_DEMAND = "on-demand"
    AUTO = "auto"


class RetryEvent(StrEnum):
    NO_CAPACITY = "no-capacity"
    INTERRUPTION = "interruption"
    ERROR = "error"


class PortMapping(BaseModel):
    """`port: 8000` or `port: "8080:8000"` (local:container); only `container_port` is served."""

    model_config = _FROZEN
    container_port: int = Field(gt=0, le=65535)
    local_port: int | None = Field(default=None, gt=0, le=65535)

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"invalid port {value!r}")
        if isinstance(value, int):
            return {"container_port": value}
        if isinstance(value, str):
            match = re.fullmatch(r"\s*(?:(\d+|\*):)?(\d+)\s*", value)
            if not match:
                raise ValueError(f"invalid port {value!r}: expected 8000 or '8080:8000'")
            local, container = match.groups()
            return {
                "container_port": int(container),
                "local_port": None if local in (None, "*") else int(local),
            }
        return value


class ReplicaRange(BaseModel):
    """`replicas: 2` (2..2), `1..4`, `0..4`, `..4` (0..4): dstack requires a maximum."""

    model_config = _FROZEN
    min: int = Field(ge=0)
    max: int = Field(ge=0)

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, list):
            raise ValueError("replica groups (a list under `replicas`) are not supported by tidegate")
        if isinstance(value, ReplicaRange):
            return value
        parsed = IntRange.model_validate(value)
        if parsed.max is None:
            raise ValueError("the maximum number of replicas is required (e.g. `1..4`)")
        return {"min": 0 if parsed.min is None else parsed.min, "max": parsed.max}

    @property
    def is_range(self) -> bool:
        return self.min != self.max


class ScalingSpec(BaseModel):
    """Autoscaling on requests per second per replica; delays in seconds (dstack: 5m up, 10m down).
    `window` (tidegate's addition) is how many seconds of traffic the rps average covers."""

    model_config = _FROZEN
    metric: Literal["rps"]
    target: float = Field(gt=0)
    scale_up_delay: Duration = 300
    scale_down_delay: Duration = 600
    window: Duration = 60

    @field_validator("scale_up_delay", "scale_down_delay", "window", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> int:
        return parse_duration(value)

    @field_validator("window")
    @classmethod
    def _window(cls, value: int) -> int:
        if value < 1:
            raise ValueError("`window` must be at least 1 second")
        return value


# What tidegate does with a failed replica, whatever the file says: restart it with exponential
# backoff, on every event (no capacity, interruption, error), for as long as the service is in git.
# dstack's `retry` forms that mean exactly that are accepted; any other form would be a field that
# changes nothing, so it is refused with this reason (no silent fields).
RETRY_UNSUPPORTED = (
    "tidegate restarts a failed replica on every event (no-capacity, interruption, error) with "
    "backoff for as long as the service is in git; only `retry: true` (or every event, no "
    "`duration`) says that — remove `retry` or use `retry: true`"
)
MAX_DURATION_UNSUPPORTED = (
    "a service runs until its file is removed from git (dstack's default for services is `off`); "
    "a `max_duration` is not supported — remove it or use `max_duration: off`"
)


class RetrySpec(BaseModel):
    """`retry: true` (every event, no time limit) or `{on_events: [...], duration: 1h}`. Only the
    forms that match what tidegate does are valid (RETRY_UNSUPPORTED)."""

    model_config = _FROZEN
    on_events: list[RetryEvent] = Field(default_factory=lambda: list(RetryEvent), min_length=1)
    duration: Duration | None = None

    @field_validator("duration", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> int | None:
        return None if value is None else parse_duration(value)

    @model_validator(mode="after")
    def _as_tidegate_does(self) -> RetrySpec:
        if set(self.on_events) != set(RetryEvent) or self.duration is not None:
            raise ValueError(RETRY_UNSUPPORTED)
        return self


def normalize_env(value: Any) -> Any:
    """List (`KEY=VAL`, `KEY=`, bare `KEY`) or mapping -> {KEY: value or None for bare}."""
    if isinstance(value, dict):
        env: dict[str, str | None] = {}
        for key, item in value.items():
            if not isinstance(key, str) or not ENV_KEY_PATTERN.match(key):
                located(f"invalid environment variable name {key!r}", str(key))
            env[key] = _env_value(item, key)
        return env
    if isinstance(value, list):
        env = {}
        for index, item in enumerate(value):
            if not isinstance(item, str):
                located(f"expected `KEY=VALUE` or `KEY`, got {type(item).__name__}", index)
            key, sep, val = item.partition("=")
            if not ENV_KEY_PATTERN.match(key):
                located(f"invalid environment variable name {key!r}", index)
            if key in env:
                located(f"duplicate environment variable {key!r}", index)
            env[key] = val if sep else None
        return env
    return value


def _env_value(item: object, key: str) -> str | None:
    if item is None or isinstance(item, str):
        return item
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, int | float):
        return str(item)
    located(f"the value of {key!r} must be a string or a number", key)


_PYTHON_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"enum": list(PYTHON_VERSIONS)},
        # unquoted YAML numbers, as validate (and dstack) accept them: `python: 3.10` reads as 3.1
        {"enum": [float("3.1" if v == "3.10" else v) for v in PYTHON_VERSIONS]},
        {"type": "null"},
    ]
}
_ENV_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "array", "items": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*(=.*)?$"}},
        {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean", "null"]}},
    ]
}
_PORT_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "integer", "minimum": 1, "maximum": 65535},
        {"type": "string", "pattern": r"^(\d+|\*):\d+$"},
    ]
}
_REPLICAS_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "integer", "minimum": 0},
        {"type": "string", "pattern": r"^\s*\d*\s*\.\.\s*\d+\s*$|^\s*\d+\s*$"},
    ]
}
_MODEL_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "description": "model name served by an OpenAI-compatible API at /v1"},
        {
            "type": "object",
            "required": ["name", "format"],
            "properties": {
                "type": {"const": "chat"},
                "name": {"type": "string"},
                "format": {"const": "openai"},
                "prefix": {"type": "string", "default": "/v1"},
            },
            "additionalProperties": False,
        },
        {
            "type": "object",
            "required": ["name", "format"],
            "properties": {
                "type": {"const": "chat"},
                "name": {"type": "string"},
                "format": {"const": "tgi"},
                "chat_template": {"type": "string"},
                "eos_token": {"type": "string"},
            },
            "additionalProperties": False,
        },
    ]
}
_RETRY_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "boolean"},
        {
            "type": "object",
            "properties": {
                "on_events": {"type": "array", "items": {"enum": [e.value for e in RetryEvent]}},
                "duration": DURATION_SCHEMA,
            },
            "additionalProperties": False,
        },
    ]
}
_MAXDURATION_SCHEMA: dict[str, Any] = {
    "anyOf": [*DURATION_SCHEMA["anyOf"], {"const": "off"}, {"type": "boolean"}]
}


class ProfileParams(BaseModel):
    """Parameters a profile in `.dstack/profiles.yml` may also set; the service file wins."""

    model_config = _FROZEN
    backends: list[str] | None = None
    regions: list[str] | None = None
    instance_types: list[str] | None = None
    spot_policy: SpotPolicy | None = None
    max_price: float | None = Field(default=None, gt=0)
    retry: Annotated[RetrySpec | None, WithJsonSchema(_RETRY_SCHEMA)] = None
    max_duration: Annotated[int | None, WithJsonSchema(_MAXDURATION_SCHEMA)] = None

    @field_validator("retry", mode="before")
    @classmethod
    def _retry(cls, value: Any) -> Any:
        if value is True:
            return {}
        if value is False:
            raise ValueError(RETRY_UNSUPPORTED)
        return value

    @field_validator("max_duration", mode="before")
    @classmethod
    def _max_duration(cls, value: Any) -> Any:
        if value is None or value is False or value is True or value == "off":
            return None  # off: a service runs until it is removed from git
        parse_duration(value)  # a malformed duration says so first
        raise ValueError(MAX_DURATION_UNSUPPORTED)


class ServiceConfig(ProfileParams):
    """One `type: service` file, profile applied. Defaults as dstack's ServiceConfiguration."""

    model_config = _FROZEN
    type: Literal["service"]
    name: str | None = None
    image: str | None = None
    python: Annotated[str | None, WithJsonSchema(_PYTHON_SCHEMA)] = None
    env: Annotated[dict[str, str | None], WithJsonSchema(_ENV_SCHEMA)] = Field(default_factory=dict)
    commands: list[str] = Field(default_factory=list)
    port: Annotated[PortMapping, WithJsonSchema(_PORT_SCHEMA)]
    resources: ResourcesSpec = ResourcesSpec()
    model: Annotated[ModelSpec | None, WithJsonSchema(_MODEL_SCHEMA)] = None
    replicas: Annotated[ReplicaRange, WithJsonSchema(_REPLICAS_SCHEMA)] = ReplicaRange(min=1, max=1)
    scaling: ScalingSpec | None = None
    auth: bool = True
    probes: list[ProbeSpec] = Field(default_factory=list, max_length=10)
    rate_limits: list[RateLimitSpec] = Field(default_factory=list, max_length=50)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not NAME_PATTERN.match(value):
            raise ValueError(
                f"invalid name {value!r}: use 2-41 lowercase letters, digits and dashes, starting with a letter"
            )
        return value

    @field_validator("python", mode="before")
    @classmethod
    def _python(cls, value: Any) -> Any:
        if isinstance(value, float):  # YAML reads `python: 3.10` as the float 3.1
            value = "3.10" if str(value) == "3.1" else str(value)
        if isinstance(value, str) and value not in PYTHON_VERSIONS:
            raise ValueError(f"unsupported python {value!r}; expected one of {', '.join(PYTHON_VERSIONS)}")
        return value

    @field_validator("resources", "model", "scaling", mode="wrap")
    @classmethod
    def _kept(cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
        assert info.field_name is not None
        return MEMOS[info.field_name].validated(value, handler)

    @field_validator("env", mode="before")
    @classmethod
    def _env(cls, value: Any) -> Any:
        return normalize_env(value)

    @field_validator("commands", mode="before")
    @classmethod
    def _commands(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError("`commands` is a list: write each command on its own `- ` line")
        return value

    @model_validator(mode="after")
    def _cross_field(self) -> ServiceConfig:
        if self.image is not None and self.python is not None:
            located("`image` and `python` are mutually exclusive: remove one of them", "python")
        if not self.commands and not self.image:
            raise ValueError("either `commands` or `image` must be set")
        if self.replicas.is_range and self.scaling is None:
            located(
                "`replicas` is a range, so `scaling` is required (e.g. `scaling: {metric: rps, target: 10}`)",
                "replicas",
            )
        prefixes = [limit.prefix for limit in self.rate_limits]
        for index, prefix in enumerate(prefixes):
            if prefix in prefixes[:index]:
                located(f"two rate limits for prefix {prefix!r}: keep one", "rate_limits", index, "prefix")
        if not self.replicas.is_range and self.scaling is not None:
            located("`scaling` needs `replicas` to be a range (e.g. `replicas: 1..4`)", "scaling")
        return self

    def requirements(self) -> Requirements:
        """What an offer must satisfy; a service defaults to on-demand instances. `regions` and
        `instance_types` are cloud terms: a service pinned to `backends: [local]` ignores them
        (a default profile's `regions: [us-east-1]` must not block it)."""
        res = self.resources
        cloud = self.backends != ["local"]
        return Requirements(
            cpus=res.cpu.to_requirement(),
            memory_gb=res.memory.to_requirement(),
            disk_gb=res.disk.to_requirement(),
            gpu=res.gpu.to_requirement() if res.gpu else None,
            spot_policy=str(self.spot_policy or SpotPolicy.ON_DEMAND),
            max_price=self.max_price,
            regions=tuple(self.regions or ()) if cloud else (),
            instance_types=tuple(self.instance_types or ()) if cloud else (),
            backends=tuple(self.backends or ()),
        )
