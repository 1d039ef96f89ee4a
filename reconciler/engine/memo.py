"""Memos of the pure per-service work of building a desired set, keyed by the very values fed in.

Why: a pass over a 1,000-service repo where one file changed (or nothing did) rebuilt every
service's replica spec hash, summary and requirements although the loader hands back the very same
`LoadedService` object for every file whose bytes did not change (reconciler.config.parse_cache).
These memos key each result by that object (by identity, the entry holding the object itself so
an id is never reused while cached) plus every other input of the function memoized (backend,
env digest, code hash, domain); a changed file is a new object, so a miss. They hold results of
pure functions only, so a hit returns exactly what the call would have; nothing time-, state- or
backend-dependent is kept here (offers are asked again each pass, see reconciler.engine.offers).

`enabled = False` (the benchmark's "before", a test comparing both) makes every lookup compute.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class IdentityMemo(Generic[T]):
    """`make()` once per (object, key) while the entry is kept. Bounded: the oldest entries go
    first; `fit(n)` makes room for n objects and the next revision of them."""

    def __init__(self, min_entries: int = 4_000) -> None:
        self.min_entries = min_entries
        self.max_entries = min_entries
        self._entries: dict[tuple[int, Hashable], tuple[object, T]] = {}
        self._lock = threading.Lock()

    def fit(self, objects: int) -> None:
        self.max_entries = max(self.max_entries, 4 * objects)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.max_entries = self.min_entries

    def get(self, obj: object, key: Hashable, make: Callable[[], T]) -> T:
        if not enabled:
            return make()
        k = (id(obj), key)
        found = self._entries.get(k)
        if found is not None and found[0] is obj:
            return found[1]
        value = make()
        with self._lock:
            self._entries[k] = (obj, value)
            while len(self._entries) > self.max_entries:
                del self._entries[next(iter(self._entries))]
        return value


enabled = True
MEMOS: list[IdentityMemo[object]] = []


def memo() -> IdentityMemo[T]:
    made: IdentityMemo[T] = IdentityMemo()
    MEMOS.append(made)  # type: ignore[arg-type]
    return made


def clear_all() -> None:
    for m in MEMOS:
        m.clear()


def fit_all(objects: int) -> None:
    for m in MEMOS:
        m.fit(objects)
