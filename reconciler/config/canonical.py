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
Which values need a check is known from each model class's annotations, once (`_plan`): a field
that can only hold str, int, bool, None, enums of str/int values, models or lists / str-keyed maps
of these is not looked at (pydantic's validation gave it that type); `float` fields are checked by
two comparisons; fields of any other type value by value. tests/config/test_canonical_json.py and
test_model_json.py hold both ways equal over varied and generated configs and edge values.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable
from enum import Enum
from types import UnionType
from typing import Annotated, Any, Literal, NamedTuple, Union, get_args, get_origin

import msgspec
from pydantic import BaseModel

FAST = True  # off: always the plain way (the plan benchmark's "before")
MAX_KEPT = 4096  # texts of shared nested values kept; a full memo starts over

_PLAIN_ENCODE = msgspec.json.Encoder(order="sorted").encode
# a float msgspec writes otherwise than json.dumps (1e16 and up, below 1e-4: `1e16`, `0.00001`)
_EXPONENT = re.compile(rb"e[-0-9]")
# id of a nested model -> (the model, its text); the model is held so its id is not reused
_KEPT: dict[int, tuple[BaseModel, bytes]] = {}
_PLANS: dict[tuple[type[BaseModel], Collection[str], Collection[str], tuple[str, ...]], _Plan] = {}
_NESTED: dict[type[Any], _Plan] = {}  # a nested model's plan (no `exclude`, no `shared`) by its class


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
        if type(nulls) is not tuple:
            nulls = tuple(nulls)
        try:
            fast = _ENCODE(_fields(model, shared, exclude, nulls))
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


def _fields(
    model: BaseModel, shared: Collection[str] = (), exclude: Collection[str] = (), nulls: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The model's fields but `exclude`, `nulls` set to None, as msgspec is to write them (nested
    models through `_hook`): the model's own `__dict__` when nothing is changed (msgspec only reads it)."""
    values = model.__dict__
    kind = type(model)
    try:
        plan = _PLANS[kind, exclude, shared, nulls]
    except KeyError:
        plan = _plan(kind, exclude, shared, nulls)
    except TypeError:  # (an `exclude` or `shared` that is not hashable, e.g. a list)
        exclude, shared = frozenset(exclude), frozenset(shared)
        plan = _PLANS.get((kind, exclude, shared, nulls)) or _plan(kind, exclude, shared, nulls)
    if values.keys() != plan.names:
        raise _Plain  # (a model made without some field, or with an extra one)
    if plan.floats or plan.other:
        _checked(values, plan)
    if not (plan.drop or plan.shared or plan.nulls):
        return values
    out = values.copy()
    for name in plan.drop:
        del out[name]
    for name in plan.shared:
        value = out[name]
        if isinstance(value, BaseModel):
            out[name] = msgspec.Raw(_kept(value))
    out.update(plan.nulls)
    return out


def _hook(value: Any) -> Any:
    """msgspec's enc_hook: what to write for a value it has no way of its own to write (a nested
    model: `_fields` of it, the plan looked up by its class alone)."""
    kind = type(value)
    plan = _NESTED.get(kind)
    if plan is None:
        if not isinstance(value, BaseModel):
            raise _Plain
        plan = _NESTED[kind] = _plan(kind, (), ())
    values = value.__dict__
    if values.keys() != plan.names:
        raise _Plain
    if plan.floats or plan.other:
        _checked(values, plan)
    return values


_ENCODE = msgspec.json.Encoder(order="sorted", enc_hook=_hook).encode


def _checked(values: dict[str, Any], plan: _Plan) -> None:
    """_Plain unless msgspec writes the values of the plan's `floats` and `other` fields as
    model_dump(mode="json") + json.dumps do."""
    for name in plan.floats:
        value = values[name]
        if type(value) is float:
            if not (1e-4 <= abs(value) < 1e16 or value == 0.0):
                raise _Plain  # (`_finite`, inline)
        elif value is not None:
            _check([value])
    for name in plan.other:
        _check([values[name]])


def _finite(value: float) -> None:
    """_Plain unless msgspec writes `value` as json.dumps does (float.__repr__): not inf or NaN
    (msgspec: null), not in exponent form (msgspec: `1e16`, `0.00001`; repr: `1e+16`, `1e-05`).
    repr writes a finite float in exponent form exactly when its magnitude is below 1e-4 or from
    1e16 on (the double nearest 1e-4 is `0.0001`; tests/config/test_model_json.py tries the
    neighbours), so two comparisons tell it (NaN fails both)."""
    if not (1e-4 <= abs(value) < 1e16 or value == 0.0):
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


class _Plan(NamedTuple):
    """What `_fields` does with one model class (for one `exclude` and `shared`), made once."""

    names: frozenset[str]  # the class's field names (the keys of a whole model's __dict__)
    drop: tuple[str, ...]  # `exclude`'s fields
    floats: tuple[str, ...]  # `float | None` fields: checked as `_finite` does
    other: tuple[str, ...]  # fields of other types: each value checked by `_check`
    shared: tuple[str, ...]  # `shared`'s fields (their model values: by identity)
    nulls: dict[str, None]  # keys written as null whatever the model holds


def _plan(
    model: type[BaseModel], exclude: Collection[str], shared: Collection[str], nulls: tuple[str, ...] = ()
) -> _Plan:
    """A field that by its annotation holds only what msgspec writes as json.dumps does (str, int,
    bool, None, enums of str or int values, nested models, lists and string-keyed maps of these)
    needs no check of its value: pydantic's validation gives a value of the annotated type (so a
    `model_copy(update=...)` must, as every one in tidegate does). A class whose dump is not its
    fields' values (serializers, computed or excluded fields, extras) takes the plain way."""
    fields = model.model_fields
    decorators = model.__pydantic_decorators__
    if (
        decorators.field_serializers
        or decorators.model_serializers
        or model.model_computed_fields
        or model.model_config.get("extra") == "allow"
        or any(field.exclude for field in fields.values())
    ):
        plan = _Plan(frozenset(), (), (), (), (), {})  # (no __dict__ has no keys: always _Plain)
    else:
        kept = [name for name in fields if name not in exclude and name not in nulls]
        plan = _Plan(
            names=frozenset(fields),
            drop=tuple(name for name in fields if name in exclude),
            floats=tuple(name for name in kept if _kind(fields[name].annotation) == "float"),
            other=tuple(name for name in kept if _kind(fields[name].annotation) == "other"),
            shared=tuple(name for name in kept if name in shared),
            nulls=dict.fromkeys(nulls),
        )
    if len(_PLANS) < MAX_KEPT:  # (an `exclude` or `shared` made anew for each call: no plan kept)
        _PLANS[model, exclude, shared, nulls] = plan
    return plan


def _kind(annotation: Any) -> str:
    """What an annotation needs: "safe" (no check), "float" (`float`, `float | None`), "other"."""
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Annotated:
        return _kind(args[0])
    if origin is Union or origin is UnionType:
        kinds = {_kind(arg) for arg in args}
        if kinds <= {"safe"}:
            return "safe"
        return "float" if kinds == {"safe", "float"} and len(args) == 2 and type(None) in args else "other"
    if origin is Literal:
        return "safe" if all(type(arg) in (str, int, bool) or arg is None for arg in args) else "other"
    if origin is list:
        return "safe" if _kind(args[0]) == "safe" else "other"
    if origin is dict:
        return "safe" if args[0] is str and _kind(args[1]) == "safe" else "other"
    if annotation is float:
        return "float"
    if annotation in (str, int, bool, type(None), None):
        return "safe"
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        values = [member.value for member in annotation]
        return "safe" if values and all(type(v) is str or type(v) is int for v in values) else "other"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "safe"  # (written by `_hook`, through its own plan)
    return "other"


def _kept(model: BaseModel) -> bytes:
    kept = _KEPT.get(id(model))
    if kept is not None and kept[0] is model:
        return kept[1]
    text = model_json(model)
    if len(_KEPT) >= MAX_KEPT:
        _KEPT.clear()
    _KEPT[id(model)] = (model, text)
    return text
