"""Validated config parts kept by their YAML value, so 1,000 files with one `resources:` validate it once.

Why: most of the time pydantic spends on a service file goes into a few nested models (the
`resources:` ranges, a model's Jinja chat template), and a repository repeats them: most
services write the same `resources:` block. A model validated here returns the instance it made
for an equal input before. That is exact, because the models are frozen values made by a pure
function of their input (and nothing edits a config's lists in place), and an input is only ever found by one of exactly equal type and value
(`1`, `1.0` and `true` are different inputs; floats by their repr, so `-0.0` is not `0.0`).
Only inputs that validated are kept: an invalid one is validated every time, so its errors are
reported as they always are. Anything but plain YAML data (str, int, float, bool, None, lists,
mappings with string keys) is validated every time.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, Final, Generic, TypeVar

T = TypeVar("T")
_MISSING: Final = object()
MAX_ENTRIES = 4096  # per field; a full memo starts over (a repository rarely has this many distinct)
MAX_DEPTH = 16  # deeper inputs are validated every time


class _Unkeyed(Exception):
    pass


def value_key(value: Any, depth: int = 0) -> Hashable:
    """A key equal for two inputs exactly when they are the same YAML data; _Unkeyed otherwise."""
    kind = type(value)
    if kind is str:
        text: str = value
        return text  # (every other key is a tuple or None, so a string never meets one)
    if kind is int or kind is bool:
        return (kind, value)
    if kind is float:
        return (float, repr(value))
    if value is None:
        return None
    if depth >= MAX_DEPTH:
        raise _Unkeyed
    if kind is dict:
        key: list[Hashable] = ["mapping"]
        for name, item in value.items():
            if type(name) is not str:
                raise _Unkeyed
            key.append(name)
            key.append(item if type(item) is str else value_key(item, depth + 1))  # (a string is its key)
        return tuple(key)
    if kind is list:
        return ("list", *(item if type(item) is str else value_key(item, depth + 1) for item in value))
    raise _Unkeyed


class ValidatedMemo(Generic[T]):
    """Use from a field's `field_validator(..., mode="wrap")`: `return MEMO.validated(value, handler)`
    (a field's: a model's own wrap validator would hand a kept instance to `__init__`)."""

    def __init__(self) -> None:
        self.enabled = True
        self._made: dict[Hashable, T] = {}

    def validated(self, value: Any, handler: Callable[[Any], T]) -> T:
        if not self.enabled:
            return handler(value)
        try:
            key = value_key(value)
        except _Unkeyed:
            return handler(value)
        made = self._made.get(key, _MISSING)
        if made is _MISSING:
            made = handler(value)  # raises for an invalid value: nothing is kept
            if len(self._made) >= MAX_ENTRIES:
                self._made.clear()
            self._made[key] = made
        return made  # type: ignore[return-value]

    def clear(self) -> None:
        self._made.clear()
