"""One file's text -> a validated ServiceConfig or positioned diagnostics. Pure; never raises.

Steps: YAML (with marks) -> shape checks (mapping, duplicate keys, `type`) -> keys dstack has but
tidegate ignores are dropped with a warning, unknown keys are errors with a suggestion -> the
default profile fills what the file leaves out -> pydantic validation, whose errors are mapped back
to line and column through the YAML node tree. Every problem of the file is reported at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ValidationError

from backends.gpu_names import KNOWN_GPU_NAMES, is_known_gpu

from .diagnostics import Diagnostic, Severity
from .dstack_fields import DSTACK_ONLY_NESTED, DSTACK_ONLY_TOP, OTHER_TYPES, did_you_mean
from .errors import SUBLOC_KEY
from .models import (
    ModelSpec,
    PortMapping,
    ProbeSpec,
    RateLimitKeySpec,
    RateLimitSpec,
    RetrySpec,
    ScalingSpec,
    ServiceConfig,
)
from .quickyaml import MISS, quick_load
from .resources import GpuSpec, ResourcesSpec
from .yamldoc import (
    Document,
    Position,
    YamlSyntaxError,
    duplicate_keys,
    load_document,
    locate,
    node_position,
    too_complex,
)


class FileKind(StrEnum):
    SERVICE = "service"
    SKIPPED = "skipped"  # a valid dstack file of another type
    INVALID = "invalid"


@dataclass(frozen=True)
class ParsedFile:
    kind: FileKind
    path: str
    name: str | None  # `name:` when it is a string, even if the file is invalid
    config: ServiceConfig | None
    diagnostics: list[Diagnostic] = field(default_factory=list)
    # where `name` and `model.name` are written, so cross-file problems point at the key
    positions: Mapping[str, Position] = field(default_factory=dict)


# loc prefix -> the model whose keys are valid there (for "did you mean")
_NESTED_MODELS: dict[tuple[str, ...], type[BaseModel]] = {
    ("scaling",): ScalingSpec,
    ("model",): ModelSpec,
    ("resources",): ResourcesSpec,
    ("resources", "gpu"): GpuSpec,
    ("retry",): RetrySpec,
    ("port",): PortMapping,
    ("probes",): ProbeSpec,
    ("rate_limits",): RateLimitSpec,
    ("rate_limits", "key"): RateLimitKeySpec,
}


class NeedMarks(Exception):
    """A diagnostic of a document parsed without marks: parse it again with them (`_parse`)."""


class Collector:
    def __init__(self, path: str, doc: Document | None, *, marked: bool = True) -> None:
        self.path = path
        self.node = doc.node if doc else None
        self.marked = marked  # False: no positions to report, so any diagnostic raises NeedMarks
        self.items: list[Diagnostic] = []

    def at(
        self,
        loc: Sequence[str | int],
        message: str,
        severity: Severity = Severity.ERROR,
        *,
        key: bool = False,
    ) -> None:
        if not self.marked:
            raise NeedMarks
        position, matched = locate(self.node, loc, key=key)
        shown = list(matched)
        last = loc[-1] if loc else None
        if last is not None and (not shown or shown[-1] != last) and _FIELD_NAME.match(str(last)):
            shown.append(last)  # a missing or unknown key: name it even though it has no node
        self.add(shown, position, message, severity)

    def add(
        self, loc: Sequence[str | int], position: Position, message: str, severity: Severity = Severity.ERROR
    ) -> None:
        if not self.marked:
            raise NeedMarks
        field = ".".join(map(str, loc))
        self.items.append(Diagnostic(self.path, position.line, position.column, field, message, severity))


_FIELD_NAME = re.compile(r"^([a-z_][a-z0-9_]*|\d+)$")


def parse_service_text(text: str, path: str, profile: Mapping[str, Any] | None = None) -> ParsedFile:
    """Validate one `.dstack.yml`; `profile` holds the default profile's raw parameters."""
    try:
        return _parse(text, path, profile or {})
    except Exception as e:  # the loader's promise is "never raises"; keep a diagnostic instead
        diag = Diagnostic(path, 1, 1, "", f"internal error while validating: {type(e).__name__}: {e}")
        return ParsedFile(FileKind.INVALID, path, None, None, [diag])


def _parse(text: str, path: str, profile: Mapping[str, Any]) -> ParsedFile:
    """Speed: most files parse with quickyaml (no line/column marks) and have no problem at all;
    a file with any diagnostic is checked again from the marked parse, so what is reported does
    not depend on the path taken."""
    data = quick_load(text)
    if data is not MISS:
        try:
            return _checked(text, path, profile, Document(data, None, within_limit=True), marked=False)
        except NeedMarks:
            pass
    try:
        doc = load_document(text)
    except YamlSyntaxError as e:
        diag = Diagnostic(path, e.position.line, e.position.column, "", e.message)
        return ParsedFile(FileKind.INVALID, path, None, None, [diag])
    return _checked(text, path, profile, doc, marked=True)


def _checked(text: str, path: str, profile: Mapping[str, Any], doc: Document, *, marked: bool) -> ParsedFile:
    out = Collector(path, doc, marked=marked)
    if not doc.within_limit and too_complex(doc.node):
        out.at((), "the document is too large or uses too many aliases to validate")
        return ParsedFile(FileKind.INVALID, path, None, None, out.items)
    data = doc.data
    if not isinstance(data, dict):
        what = (
            "the file is empty" if data is None else f"expected a mapping of keys, got {type(data).__name__}"
        )
        out.at((), what)
        return ParsedFile(FileKind.INVALID, path, None, None, out.items)
    name = data.get("name") if isinstance(data.get("name"), str) else None
    kind = data.get("type")
    if kind in OTHER_TYPES:
        out.at(("type",), f"skipped: `type: {kind}` is not a service", Severity.INFO)
        return ParsedFile(FileKind.SKIPPED, path, name, None, out.items)
    if kind != "service":
        hint = did_you_mean(str(kind), ("service", *OTHER_TYPES)) if isinstance(kind, str) else ""
        message = "missing `type: service`" if kind is None else f"unknown type {kind!r}{hint}"
        out.at(("type",), message)
    if doc.node is not None:  # (no marks, no node tree: yaml-rs refuses a duplicate key itself)
        for loc, node in duplicate_keys(doc.node):
            out.add(loc, node_position(node), f"duplicate key {loc[-1]!r} (YAML keeps only the last one)")
    raw = _drop_foreign_keys(data, out)
    for key, value in profile.items():
        raw.setdefault(key, value)  # the service file wins field by field
    raw["type"] = "service"  # a wrong `type` is reported above, once; still check everything else
    config: ServiceConfig | None = None
    try:
        config = ServiceConfig.model_validate(raw)
    except ValidationError as e:
        report_validation_error(e, out)
    errors = any(d.severity == Severity.ERROR for d in out.items)
    if errors:
        config = None
    elif config is not None:
        _warn_unknown_gpus(config, out)
    kind_out = FileKind.SERVICE if config is not None else FileKind.INVALID
    positions = _key_positions(doc, data) if marked else _LazyPositions(text)
    return ParsedFile(kind_out, path, name, config, out.items, positions)


class _LazyPositions(Mapping[str, Position]):
    """`_key_positions` of a file parsed without marks, found on first use: only a problem between
    files (two services with one name or one model) needs them."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._found: dict[str, Position] | None = None

    def _positions(self) -> dict[str, Position]:
        if self._found is None:
            try:
                doc = load_document(self._text)
            except YamlSyntaxError:
                self._found = {}
            else:
                self._found = _key_positions(doc, doc.data) if isinstance(doc.data, dict) else {}
        return self._found

    def __getitem__(self, key: str) -> Position:
        return self._positions()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._positions())

    def __len__(self) -> int:
        return len(self._positions())


def _key_positions(doc: Document, data: dict[Any, Any]) -> dict[str, Position]:
    positions: dict[str, Position] = {}
    if "name" in data:
        positions["name"] = locate(doc.node, ("name",), key=True)[0]
    model = data.get("model")
    if isinstance(model, str):
        positions["model.name"] = locate(doc.node, ("model",))[0]
    elif isinstance(model, dict) and "name" in model:
        positions["model.name"] = locate(doc.node, ("model", "name"))[0]
    return positions


def _warn_unknown_gpus(config: ServiceConfig, out: Collector) -> None:
    gpu = config.resources.gpu
    for name in (gpu.name or []) if gpu else []:
        if not is_known_gpu(name):
            hint = did_you_mean(name, KNOWN_GPU_NAMES)
            out.at(
                ("resources", "gpu"),
                f"unknown GPU name {name!r}{hint} (no offer will match it; known: "
                "H100, H200, A100, A10G, L40S, L4, T4, MI300X, …; see `tidegate offers`)",
                Severity.WARNING,
            )


_KNOWN_KEYS = frozenset(ServiceConfig.model_fields)


def _drop_foreign_keys(data: dict[Any, Any], out: Collector) -> dict[str, Any]:
    if data.keys() <= _KNOWN_KEYS:  # (the usual file: the loop below would copy every key)
        raw: dict[str, Any] = dict(data)
        for prefix, fields in DSTACK_ONLY_NESTED.items():
            raw = _drop_nested(raw, prefix, fields, out)
        return raw
    raw = {}
    for key, value in data.items():
        if isinstance(key, str) and key in _KNOWN_KEYS:
            raw[key] = value
        elif not isinstance(key, str):
            out.at((), f"keys must be strings, got {key!r}")
        elif key in DSTACK_ONLY_TOP:
            out.at(
                (key,),
                f"`{key}` is accepted but tidegate does not act on it ({DSTACK_ONLY_TOP[key]})",
                Severity.WARNING,
                key=True,
            )
        else:
            out.at(
                (key,),
                f"unknown key '{key}'{did_you_mean(key, _KNOWN_KEYS | set(DSTACK_ONLY_TOP))}",
                key=True,
            )
    for prefix, fields in DSTACK_ONLY_NESTED.items():
        raw = _drop_nested(raw, prefix, fields, out)
    return raw


def _drop_nested(
    raw: dict[str, Any], prefix: tuple[str, ...], fields: Mapping[str, str], out: Collector
) -> dict[str, Any]:
    parent: Any = raw
    for part in prefix:
        parent = parent.get(part) if isinstance(parent, dict) else None
    if not isinstance(parent, dict) or parent.keys().isdisjoint(fields):
        return raw
    cleaned = {k: v for k, v in parent.items() if k not in fields}
    for key in parent:
        if key in fields:
            dotted = ".".join((*prefix, key))
            out.at(
                (*prefix, key),
                f"`{dotted}` is accepted but tidegate does not act on it ({fields[key]})",
                Severity.WARNING,
                key=True,
            )
    return _rebuilt(raw, prefix, cleaned)


def _rebuilt(node: dict[str, Any], prefix: tuple[str, ...], cleaned: dict[str, Any]) -> dict[str, Any]:
    """`node` with the mapping at `prefix` replaced by `cleaned`, through copies (the caller's data
    is never mutated)."""
    if not prefix:
        return cleaned
    copy = dict(node)
    copy[prefix[0]] = _rebuilt(node[prefix[0]], prefix[1:], cleaned)
    return copy


def report_validation_error(
    error: ValidationError, out: Collector, prefix: tuple[str | int, ...] = ()
) -> None:
    """Turn pydantic's errors into diagnostics; `prefix` is where the validated value sits."""
    for item in error.errors(include_url=False):
        loc: list[str | int] = [*prefix, *item["loc"]]
        ctx = item.get("ctx") or {}
        loc.extend(ctx.get(SUBLOC_KEY, []))
        kind = item["type"]
        message = str(item["msg"])
        for noise in ("Value error, ", "Assertion failed, "):
            if message.startswith(noise):
                message = message[len(noise) :]
        if kind == "extra_forbidden":
            parent = tuple(p for p in item["loc"][:-1] if isinstance(p, str) and p in _nested_names())
            model = _NESTED_MODELS.get(parent)
            key = str(loc[-1])
            hint = did_you_mean(key, model.model_fields) if model else ""
            out.at(loc, f"unknown key '{key}'{hint}", key=True)
            continue
        if kind == "missing":
            message = f"required key `{loc[-1]}` is missing"
        elif "input" in item and kind not in ("value_error",) and _is_scalar(item["input"]):
            message = f"{message} (got {item['input']!r})"
        out.at(loc, message)


def _nested_names() -> set[str]:
    return {name for prefix in _NESTED_MODELS for name in prefix}


def _is_scalar(value: object) -> bool:
    return value is None or isinstance(value, str | int | float | bool)
