"""dstack's resource grammar: CPU/memory/disk sizes and ranges, and the GPU spec mini-language.

The strings users write (`cpu: 2..`, `memory: 16GB..`, `gpu: A100,H100:80GB:2`) are parsed into
plain ranges here, with dstack's defaults (cpu `2..`, memory `8GB..`, disk `100GB..`, a GPU with
no count means exactly one, as in dstack). Every model also accepts its own dumped form
(`{"min": 2, "max": null}`), so `model_validate(model_dump())` round-trips.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from backends.base import GpuRequirement
from backends.base import Range as ReqRange

GPU_VENDORS = {"nvidia": "nvidia", "amd": "amd", "tpu": "google", "google": "google", "intel": "intel"}

_INT_RANGE_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "integer", "minimum": 0},
        {"type": "string", "pattern": r"^\s*\d*\s*(\.\.\s*\d*\s*)?$"},
        {
            "type": "object",
            "properties": {"min": {"type": ["integer", "null"]}, "max": {"type": ["integer", "null"]}},
        },
    ],
}
_MEMORY_RANGE_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "number", "minimum": 0},
        {"type": "string", "examples": ["16GB", "16GB..", "24GB..80GB", "512MB"]},
        {
            "type": "object",
            "properties": {"min": {"type": ["number", "null"]}, "max": {"type": ["number", "null"]}},
        },
    ],
}
_GPU_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "integer", "minimum": 1},
        {
            "type": "string",
            "examples": ["24GB", "A100", "A100:2", "A100,H100:80GB:2", "24GB..80GB", "nvidia:80GB:4"],
        },
        {
            "type": "object",
            "properties": {
                "name": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
                "count": _INT_RANGE_SCHEMA,
                "memory": _MEMORY_RANGE_SCHEMA,
                "total_memory": _MEMORY_RANGE_SCHEMA,
                "vendor": {"type": "string", "enum": sorted(GPU_VENDORS)},
                "compute_capability": {"type": ["string", "number"]},
            },
            "additionalProperties": False,
        },
    ],
}


def parse_memory(value: object) -> float:
    """Gigabytes from `80GB`, `512MB`, `1TB`, `16` (GB) or a number."""
    if isinstance(value, bool):
        raise ValueError(f"invalid size {value!r}: expected e.g. 16GB")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"a size cannot be negative: {value}")
        return float(value)
    if isinstance(value, str):
        text = value.replace(" ", "").lower()
        factor = 1.0
        for unit, unit_factor in (("tb", 1024.0), ("gb", 1.0), ("mb", 1 / 1024)):
            if text.endswith(unit):
                text, factor = text[: -len(unit)], unit_factor
                break
        try:
            number = float(text)
        except ValueError:
            number = -1.0
        if number >= 0 and number != float("inf"):
            return number * factor
    raise ValueError(f"invalid size {value!r}: expected e.g. 16GB, 512MB or 1TB")


_UNIT_FACTORS = {"tb": 1024.0, "gb": 1.0, "mb": 1 / 1024}


def _size(word: str) -> float | None:
    """`parse_memory(word)` for the usual size words (`16gb`, `512mb`, `1.5tb`, `8`: ASCII digits,
    at most one dot, a unit or none; lowercase, no spaces), None for any other."""
    factor = _UNIT_FACTORS.get(word[-2:])
    number = word if factor is None else word[:-2]
    whole, _dot, fraction = number.partition(".")
    if not (
        whole.isascii() and whole.isdigit() and (not fraction or (fraction.isascii() and fraction.isdigit()))
    ):
        return None
    size = float(number)
    if size == float("inf"):
        return None
    return size * (1.0 if factor is None else factor)


def _parse_count(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError(f"invalid number {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a count cannot be negative: {value}")
        return value
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    raise ValueError(f"invalid number {value!r}: expected a whole number")


def _split_range(value: object) -> tuple[object, object] | None:
    """`"a..b"` -> (a or None, b or None); a dict {min, max} likewise; a scalar -> None."""
    if isinstance(value, str) and ".." in value:
        low, _sep, high = value.replace(" ", "").partition("..")
        if ".." in high:
            raise ValueError(f"invalid range {value!r}")
        return (low or None, high or None)
    if isinstance(value, dict):
        extra = set(value) - {"min", "max"}
        if extra:
            raise ValueError(f"a range has only `min` and `max`, got {sorted(map(str, extra))}")
        return (value.get("min"), value.get("max"))
    return None


class IntRange(BaseModel):
    """Inclusive integer range (`2`, `2..`, `..8`, `1..8`); None = unbounded on that side."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    min: int | None = None
    max: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, IntRange):
            return value
        if type(value) is str:  # the common `2..`, `1..8`, `..8`, `4` (anything else: below)
            if ".." not in value:
                digits = value.strip()
                if digits.isascii() and digits.isdigit():
                    return {"min": int(digits), "max": int(digits)}
            else:
                first, _dots, last = value.replace(" ", "").partition("..")
                if (
                    (not first or (first.isascii() and first.isdigit()))
                    and (not last or (last.isascii() and last.isdigit()))
                    and (first or last)
                ):
                    lo, hi = int(first) if first else None, int(last) if last else None
                    if lo is None or hi is None or lo <= hi:
                        return {"min": lo, "max": hi}
        bounds = _split_range(value)
        if bounds is None:
            exact = _parse_count(value)
            return {"min": exact, "max": exact}
        low, high = (None if b is None else _parse_count(b) for b in bounds)
        return _ordered(low, high, value)

    def __str__(self) -> str:
        return _range_str(self.min, self.max, str)

    def to_requirement(self) -> ReqRange:
        return ReqRange(self.min, self.max)


class MemoryRange(BaseModel):
    """Inclusive size range in GB (`16GB`, `16GB..`, `24GB..80GB`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    min: float | None = None
    max: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, MemoryRange):
            return value
        if type(value) is str:  # the common `16GB..`, `24GB..80GB`, `512MB` (anything else: below)
            first, dots, last = value.replace(" ", "").lower().partition("..")
            lo, hi = _size(first) if first else None, _size(last) if last else None
            if (lo is not None or not first) and (hi is not None or not last) and (first or last):
                if not dots:
                    return {"min": lo, "max": lo}
                if lo is None or hi is None or lo <= hi:
                    return {"min": lo, "max": hi}
        bounds = _split_range(value)
        if bounds is None:
            exact = parse_memory(value)
            return {"min": exact, "max": exact}
        low, high = (None if b is None else parse_memory(b) for b in bounds)
        return _ordered(low, high, value)

    def __str__(self) -> str:
        return _range_str(self.min, self.max, lambda v: f"{v:g}GB")

    def to_requirement(self) -> ReqRange:
        return ReqRange(self.min, self.max)


def _ordered(low: float | None, high: float | None, original: object) -> dict[str, float | None]:
    if low is None and high is None:
        raise ValueError(f"invalid empty range {original!r}")
    if low is not None and high is not None and low > high:
        raise ValueError(f"invalid range order {original!r}: min is greater than max")
    return {"min": low, "max": high}


def _range_str(low: Any, high: Any, fmt: Any) -> str:
    if low == high:
        return str(fmt(low))
    return f"{'' if low is None else fmt(low)}..{'' if high is None else fmt(high)}"


IntRangeField = Annotated[IntRange, WithJsonSchema(_INT_RANGE_SCHEMA)]
MemoryRangeField = Annotated[MemoryRange, WithJsonSchema(_MEMORY_RANGE_SCHEMA)]


class GpuSpec(BaseModel):
    """dstack's GPU spec: any of `names`, memory per GPU, count (default exactly 1), vendor."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: list[str] | None = None
    count: IntRangeField = IntRange(min=1, max=1)
    memory: MemoryRangeField | None = None
    vendor: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"invalid GPU spec {value!r}")
        if isinstance(value, int):
            return {"count": value}
        if isinstance(value, str):
            return parse_gpu_string(value)
        return value

    @field_validator("name", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, list):
            names = [n.strip() if isinstance(n, str) else n for n in value]
            if any(isinstance(n, str) and not n for n in names) or not names:
                raise ValueError("a GPU name cannot be empty")
            return names
        return value

    @field_validator("vendor", mode="before")
    @classmethod
    def _vendor(cls, value: Any) -> Any:
        if isinstance(value, str):
            vendor = GPU_VENDORS.get(value.lower())
            if vendor is None:
                raise ValueError(
                    f"unknown GPU vendor {value!r}; expected one of {', '.join(sorted(GPU_VENDORS))}"
                )
            return vendor
        return value

    def to_requirement(self) -> GpuRequirement:
        return GpuRequirement(
            names=tuple(self.name or ()),
            memory_gb=self.memory.to_requirement() if self.memory else ReqRange(),
            count=self.count.to_requirement(),
            vendor=self.vendor,
        )


def parse_gpu_string(value: str) -> dict[str, Any]:
    """`[vendor:][name[,name...]:][memory[..memory]:][count[..count]]` in any order, as dstack."""
    spec: dict[str, Any] = {}
    for token in value.replace(" ", "").split(":"):
        if not token:
            raise ValueError(f"GPU spec {value!r} contains an empty part")
        if token.lower() in GPU_VENDORS:
            kind = "vendor"
        elif token[0].isalpha():  # a GPU name always starts with a letter
            kind = "name"
        elif any(c.isalpha() for c in token):  # a size always has a unit
            kind = "memory"
        else:
            kind = "count"
        if kind in spec:
            raise ValueError(f"GPU spec {value!r} gives the {kind} twice")
        spec[kind] = token
    return spec


_DISK_SCHEMA: dict[str, Any] = {
    "anyOf": [
        *_MEMORY_RANGE_SCHEMA["anyOf"][:2],
        {"type": "object", "properties": {"size": _MEMORY_RANGE_SCHEMA}},
    ]
}


class ResourcesSpec(BaseModel):
    """`resources:` with dstack's defaults; `disk` is the disk size range (`disk: 100GB..`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    cpu: IntRangeField = IntRange(min=2)
    memory: MemoryRangeField = MemoryRange(min=8.0)
    disk: Annotated[MemoryRange, WithJsonSchema(_DISK_SCHEMA)] = MemoryRange(min=100.0)
    gpu: Annotated[GpuSpec | None, WithJsonSchema(_GPU_SCHEMA)] = Field(default=None)

    @field_validator("disk", mode="before")
    @classmethod
    def _disk(cls, value: Any) -> Any:
        if isinstance(value, dict) and "size" in value:
            extra = set(value) - {"size"}
            if extra:
                raise ValueError(f"`disk` has only `size`, got {sorted(map(str, extra))}")
            return value["size"]
        return value
