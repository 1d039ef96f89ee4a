"""Canonical JSON (the spec hash's text), and a config model's canonical JSON without a model_dump.

Why: `loader.spec_hash` hashes `canonical_json(config.model_dump(mode="json"))` for every file of a
tree on a cold load, and the engine hashes a second dump of each config (desired_parts). pydantic's
dump (~9 µs) and msgspec's read-back (~3 µs) were most of that. `model_json` writes the same
bytes from the model's field values: strings, ints, bools, None and lists / string-keyed maps of
them as they are, enums by their value, nested models by their own text (spliced in with
msgspec.Raw; a value shared by the value memo, e.g. one `resources:` instance across 1,000 files,
is written once, kept by identity), all in one msgspec call.

Why no read-back: msgspec writes every value met here as json.dumps does, except what the text
checks of `canonical_json` look for (non-ASCII, DEL, floats in exponent form) and non-finite floats
(null where json.dumps writes Infinity / NaN), which are checked where they are met. Any other
type (a tuple, a set, a non-string key ...) takes the plain way, `canonical_json(model_dump())`.
tests/config/test_canonical_json.py holds both ways equal over varied configs and edge values.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection, Iterable
from enum import Enum
from typing import Any

import msgspec
from pydantic import BaseModel

FAST = True  # off: always the plain way (the plan benchmark's "before")
MAX_KEPT = 4096  # texts of shared nested values kept; a full memo starts over

_PLAIN_ENCODE = msgspec.json.Encoder(order="sorted").encode
# a float msgspec writes otherwise than json.dumps (1e16 and up, below 1e-4: `1e16`, `0.00001`)
_EXPONENT = re.compile(rb"e[-0-9]")
# id of a nested model -> (the model, its text); the model is held so its id is not reused
_KEPT: dict[int, tuple[BaseModel, bytes]] = {}
_NAMES: dict[type[BaseModel], frozenset[str]] = {}


def canonical_json(payload: Any) -> bytes:
    """`json.dumps(payload, sort_keys=True, separators=(",", ":"))`, the spec hash's text: a hash
    must not change across versions (a new one rolls every replica). msgspec writes the same
    bytes ~7x faster for ASCII text and ordinary floats; anything else (non-ASCII or DEL, which
    json.dumps escapes; floats it writes in exponent form; inf and NaN, which msgspec writes as
    null, so the text does not read back equal) takes json.dumps."""
    fast = _PLAIN_ENCODE(payload)
    if _plain_text(fast) and msgspec.json.decode(fast) == payload:
        return fast
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def _hooked(value: Any) -> Any:
    return _hook(value)


_ENCODE = msgspec.json.Encoder(order="sorted", enc_hook=_hooked).encode


def _plain_text(text: bytes) -> bool:
    """Text msgspec writes exactly as json.dumps does (given values it writes alike)."""
    return text.isascii() and b"\x7f" not in text and b"0.0000" not in text and not _EXPONENT.search(text)


def model_json(
    model: BaseModel, exclude: Collection[str] = (), nulls: Iterable[str] = (), shared: Collection[str] = ()
) -> bytes:
    """`canonical_json` of `model.model_dump(mode="json", exclude=exclude)` with the keys `nulls`
    set to None. `shared`: fields whose model values are often one instance across configs (the
    value memo's: models.MEMOS), kept by identity."""
    if FAST:
        try:
            fields = _fields(model, shared, exclude)
            fields.update(dict.fromkeys(nulls))
            fast = _ENCODE(fields)
        except _Plain:
            pass
        else:
            # (every float is checked where it is met: `_finite`)
            if fast.isascii() and b"\x7f" not in fast:
                return fast
    payload = model.model_dump(mode="json", exclude=set(exclude) or None)
    payload.update(dict.fromkeys(nulls))
    return canonical_json(payload)


def clear() -> None:
    _KEPT.clear()


class _Plain(Exception):
    """A value the fast way does not write: the plain way writes the model."""


def _fields(model: BaseModel, shared: Collection[str] = (), exclude: Collection[str] = ()) -> dict[str, Any]:
    """The model's fields but `exclude` as msgspec is to write them (nested models through `_hook`)."""
    values = model.__dict__
    if values.keys() != _names(type(model)):
        raise _Plain  # (a model made without some field, or with an extra one)
    out = values.copy()
    for name, value in values.items():
        if name in exclude:
            del out[name]
            continue
        kind = type(value)
        if kind is str or kind is int or kind is bool or value is None:
            continue
        if kind is float:
            _finite(value)
        elif kind is list or kind is dict:
            _check(value)
        elif isinstance(value, BaseModel):
            if name in shared:
                out[name] = msgspec.Raw(_kept(value))
        elif isinstance(value, Enum):
            out[name] = value.value
            _check([value.value])
        else:
            raise _Plain
    return out


def _hook(value: Any) -> Any:
    """msgspec's enc_hook: what to write for a value it has no way of its own to write."""
    if isinstance(value, BaseModel):
        return _fields(value)
    raise _Plain


def _finite(value: float) -> None:
    """_Plain unless msgspec writes `value` as json.dumps does (float.__repr__): not inf or NaN
    (msgspec: null), not in exponent form (msgspec: `1e16`, `0.00001`; repr: `1e+16`, `1e-05`)."""
    if not math.isfinite(value) or "e" in repr(value):
        raise _Plain


def _check(items: list[Any] | dict[Any, Any]) -> None:
    """_Plain unless msgspec writes every value in `items` as model_dump(mode="json") + json.dumps
    do (nested models are checked when `_hook` meets them)."""
    if type(items) is dict:
        if any(type(key) is not str for key in items):
            raise _Plain
        items = list(items.values())
    for item in items:
        kind = type(item)
        if kind is str or kind is int or kind is bool or item is None or isinstance(item, BaseModel):
            continue
        if kind is float:
            _finite(item)
        elif kind is list or kind is dict:
            _check(item)
        elif isinstance(item, Enum) and type(item.value) is str:
            continue  # msgspec writes an enum's value, as model_dump(mode="json") gives it
        else:
            raise _Plain


def _names(model: type[BaseModel]) -> frozenset[str]:
    """A model's field names (pydantic's `model_fields` makes a new mapping on every access)."""
    names = _NAMES.get(model)
    if names is None:
        names = _NAMES[model] = frozenset(model.model_fields)
    return names


def _kept(model: BaseModel) -> bytes:
    kept = _KEPT.get(id(model))
    if kept is not None and kept[0] is model:
        return kept[1]
    text = model_json(model)
    if len(_KEPT) >= MAX_KEPT:
        _KEPT.clear()
    _KEPT[id(model)] = (model, text)
    return text
