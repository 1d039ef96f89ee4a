"""`deep_copy(doc)`: what `doc.model_copy(deep=True)` makes, at a fraction of its cost; and
`copy_on_write(doc)`: a scratch document whose records are copied only when edited.

Why: `Engine.plan` works on a scratch copy of the state document (observation edits records;
a plan must leave the real ones alone), and `ps` copies it to read it outside the engine's lock.
`copy.deepcopy` dispatches every value through its generic protocol: on a restart with 1,000
recorded services (each with its replicas, history and summary) the copy alone took ~90 ms, more
than loading and planning the whole tree. Nearly every value in a record is a string, a number,
None or an enum member, which `deepcopy` returns as they are; this copy walks only what holds
other objects (models, lists, dicts) and copies the rest of a model's fields with one dict copy.

The result is the same as pydantic's `__deepcopy__` (and `Versioned.__deepcopy__`): every model,
list and dict is a new object, an object reached twice is copied once (a memo, as deepcopy
keeps), fields-set and private attributes are copied, and each versioned record gets a version
of its own. Anything else (a tuple holding models, a set, an unknown type) goes to
`copy.deepcopy` with the same memo. A test compares it with `model_copy(deep=True)` over
varied documents (tests/reconciler/test_doc_copy.py).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from enum import Enum
from typing import Any, TypeVar

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from reconciler.state.records import ServiceRecord, StateDoc, Versioned

M = TypeVar("M", bound=BaseModel)

# Types whose values `copy.deepcopy` returns as they are (its `_deepcopy_atomic`), and enum
# types (`Enum.__deepcopy__` returns the member), added when first met (`_kind`).
_ATOMIC: set[type] = {str, int, float, bool, type(None), bytes, complex}

_OTHER, _MODEL, _VERSIONED = 0, 1, 2
_KINDS: dict[type, int] = {}  # non-atomic types met so far -> how they are copied


def _kind(t: type) -> int:
    """How values of type `t` are copied, found once per type (an isinstance check on a pydantic
    model goes through ABCMeta and costs more than the copy of a small record's fields)."""
    found = _KINDS.get(t)
    if found is None:
        if issubclass(t, Enum):
            _ATOMIC.add(t)
            return _OTHER  # never asked again: `_ATOMIC` is looked up first
        found = _OTHER
        # Models whose deep copy is pydantic's own, or Versioned's (which also bumps the
        # version); a model with a `__deepcopy__` of its own goes to `copy.deepcopy`.
        if issubclass(t, BaseModel) and t.__deepcopy__ in (BaseModel.__deepcopy__, Versioned.__deepcopy__):
            found = _VERSIONED if issubclass(t, Versioned) else _MODEL
        _KINDS[t] = found
    return found


def deep_copy(model: M) -> M:
    """A deep copy of a pydantic model (a state document, a record): see the module's doc."""
    kind = _kind(type(model))
    if kind == _OTHER:
        return copy.deepcopy(model)
    return _model(model, {}, kind == _VERSIONED)


def _model(m: M, memo: dict[int, Any], versioned: bool) -> M:
    cls = type(m)
    made = cls.__new__(cls)
    memo[id(m)] = made
    fields = m.__dict__.copy()
    atomic = _ATOMIC
    for k, v in fields.items():
        if type(v) not in atomic:
            fields[k] = _value(v, memo)
    object.__setattr__(made, "__dict__", fields)
    extra = m.__pydantic_extra__
    object.__setattr__(made, "__pydantic_extra__", None if extra is None else _value(extra, memo))
    object.__setattr__(made, "__pydantic_fields_set__", set(m.__pydantic_fields_set__))
    private = getattr(m, "__pydantic_private__", None)
    if private is None:
        object.__setattr__(made, "__pydantic_private__", None)
    else:
        kept = {k: v if type(v) in atomic else _value(v, memo) for k, v in private.items() if v is not PydanticUndefined}
        object.__setattr__(made, "__pydantic_private__", kept)
    if versioned:
        made._bump()  # type: ignore[attr-defined]  # a copy is another record (Versioned.__deepcopy__)
    return made


def _value(v: Any, memo: dict[int, Any]) -> Any:
    """`v` copied. Only objects reachable from the model being copied are memoized by id (they
    stay alive throughout, so an id is never reused meanwhile); `copy.deepcopy` keeps alive what
    it memoizes itself."""
    t = type(v)
    atomic = _ATOMIC
    if t in atomic:
        return v
    known = memo.get(id(v))
    if known is not None:
        return known
    if t is list:
        out: list[Any] = []
        memo[id(v)] = out
        out.extend([x if type(x) in atomic else _value(x, memo) for x in v])
        return out
    if t is dict and all(type(k) in atomic for k in v):
        made = v.copy()
        memo[id(v)] = made
        for k, x in v.items():
            if type(x) not in atomic:
                made[k] = _value(x, memo)
        return made
    if t is tuple and all(type(x) in atomic for x in v):
        return v  # what deepcopy gives for a tuple whose items it keeps
    kind = _kind(t)
    if kind != _OTHER:
        return _model(v, memo, kind == _VERSIONED)
    if t in atomic:  # an enum type met for the first time
        return v
    return copy.deepcopy(v, memo)


COPY_ON_WRITE = True  # off: `Engine.plan` deep-copies the whole document (bench/plans.py's "before")

# A record about to be edited -> the record to edit: `Engine.plan` observes into a scratch
# document (reconciler.engine.observe) whose records are the real ones until one is edited (`copy_on_write`).
Own = Callable[[ServiceRecord], ServiceRecord]


def copy_on_write(doc: StateDoc) -> tuple[StateDoc, Own]:
    """A scratch `doc` for `observe` (and then the read-only planning) to work on, and the `own`
    to pass it: the document object and its services mapping are new, its other fields and every
    record are the real ones until `own(record)` replaces it (in the scratch document only) by a deep copy,
    which is then edited. So a plan leaves the real records alone and copies only those the
    backends' answers change (most plans: none), where a deep copy of the whole document cost
    ~40 ms on a restart with 1,000 services (and as much to free it)."""
    scratch = doc.model_copy()  # its fields shared: nothing a plan does edits them
    scratch.__dict__["services"] = dict(doc.services)  # as `model_copy(update=...)`, fields-set kept
    copied: set[int] = set()

    def own(rec: ServiceRecord) -> ServiceRecord:
        if id(rec) in copied:
            return rec
        made = deep_copy(rec)
        copied.add(id(made))  # the copy is kept by `scratch`: its id is not reused meanwhile
        services = scratch.services
        key = rec.name if services.get(rec.name) is rec else next(k for k, v in services.items() if v is rec)
        services[key] = made
        return made

    return scratch, own
