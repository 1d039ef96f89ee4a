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

import gc
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

T = TypeVar("T")


class IdentityMemo(Generic[T]):
    """`make()` once per (object, key) while the entry is kept. Bounded: the oldest entries go
    first; `fit(n)` makes room for n objects and the next revision of them."""

    def __init__(self, min_entries: int = 4_000) -> None:
        self.min_entries = min_entries
        self.max_entries = min_entries
        self._entries: OrderedDict[tuple[int, Hashable], tuple[object, T]] = OrderedDict()
        self._lock = threading.Lock()

    def fit(self, objects: int) -> None:
        self.max_entries = max(self.max_entries, 4 * objects)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.max_entries = self.min_entries

    def get(
        self, obj: object, key: Hashable, make: Callable[[], T], valid: Callable[[T], bool] | None = None
    ) -> T:
        """`make()`'s value for (obj, key); `valid` (when given) must accept a kept value, else it
        is made again (an input read lazily by `make`, such as the code hash, is checked so)."""
        if not enabled:
            return make()
        k = (id(obj), key)
        found = self._entries.get(k)
        if found is not None and found[0] is obj and (valid is None or valid(found[1])):
            return found[1]
        value = make()
        with self._lock:
            self._entries[k] = (obj, value)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)  # O(1), unlike deleting a dict's first key
        return value


enabled = True
MEMOS: list[IdentityMemo[object]] = []
_CLEARS: list[Callable[[], None]] = []  # other kept results, cleared with the memos


def memo() -> IdentityMemo[T]:
    made: IdentityMemo[T] = IdentityMemo()
    MEMOS.append(made)  # type: ignore[arg-type]
    return made


def on_clear(clear: Callable[[], None]) -> None:
    """`clear()` is called by `clear_all` (a kept result that is not an IdentityMemo)."""
    _CLEARS.append(clear)


def clear_all() -> None:
    for m in MEMOS:
        m.clear()
    for clear in _CLEARS:
        clear()


def fit_all(objects: int) -> None:
    for m in MEMOS:
        m.fit(objects)


PROMOTE = True  # off: the load's objects stay young (bench/reload_rss.py compares both)
# A pause that left fewer young objects than this (a pass with no new revision to load) ends
# as before: their collection is cheap, and promoting them would hold full collections off.
PROMOTE_MIN = 10_000
_gc_lock = threading.Lock()
_gc_holders = 0
_gc_was_enabled = False


@contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector held off while a desired set is loaded and built.

    Why: loading 10,000 files makes a few million objects that live on (the parse cache's
    entries), and each collection the allocation count triggers walks all of them again: about a
    third of a cold load's time. Reference counting still frees everything not in a cycle; the
    collector runs as usual once the last load in the process ends (the pause is process-wide,
    so it is counted across threads and ends with the last one).

    At the end of a pause that made many objects (a load: PROMOTE_MIN) they are moved to the
    oldest generation unvisited (`_promote`) before the collector is enabled again. Without that, the first allocation after
    `gc.enable()` collected generation 0, which then held every object the load made (~58,000
    per 1,000 services: 15-45 ms of a cold 1,000-service plan, 250-450 ms at 10,000), and the
    survivors were walked once more by the next generation-1 collection. See `_promote` for
    what that costs and how full collections keep coming."""
    global _gc_holders, _gc_was_enabled
    with _gc_lock:
        if _gc_holders == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_holders += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_holders -= 1
            if _gc_holders == 0 and _gc_was_enabled:
                if enabled and PROMOTE and gc.get_count()[0] >= PROMOTE_MIN:
                    _promote()
                gc.enable()


FULL_EVERY = 10  # at most this many promotions in a row without a full collection (`_promote`)
_promoted = 0  # promotions since the collector last ran a full collection
_full_seen = -1  # its count of full collections then


def _promote() -> None:
    """Every object the collector tracks moved to the oldest generation, without visiting any.

    How: `gc.freeze()` merges every generation's list into the permanent generation (a list
    splice each, O(1)) and zeroes the generations' counts; `gc.unfreeze()` splices the permanent
    generation into the oldest one. Nothing is traversed, nothing stays frozen (the process
    never freezes objects otherwise: a freeze of its own would end here).

    What it costs:
    - Cyclic garbage is collected later. What the load itself leaves is tiny (a cold
      1,000-service plan: 5 objects in cycles, found by `gc.collect(0)` after a paused plan;
      acyclic garbage is freed by reference counting as before), but every object alive at the
      end of the pause is promoted, so whatever cycle dies after it (an exception's traceback,
      a closed connection) waits for a full collection instead of a young one.
    - Full collections stop coming by themselves: CPython runs one when generation 2's count
      (collections of generation 1 since the last full one) passes 10 and the objects promoted
      by young collections exceed a quarter of the old ones; the splice counts in neither, and
      the zeroed counts postpone generation-1 collections too. Measured (bench/reload_rss.py,
      1,000 services, 50 revisions with a tenth of the files changed each, reconciled): without
      the promotion 596 / 54 / 5 collections of generations 0 / 1 / 2 and 4.4 s in the collector;
      promoting at the end of every pause (each pass pauses) 551 / 0 / 0 and 0.9 s. Hence
      PROMOTE_MIN (a pass that loaded nothing new is not promoted: its collections run as
      before), and after FULL_EVERY promotions with no full collection in between, the pause
      ends with one (`gc.collect()`, ~80 ms at 1,000 services, what the
      collector itself ran about every 10 revisions there) instead: cyclic garbage is freed at
      least as often as CPython's own cadence would. With both, 30 such revisions: 3 full
      collections with and without, RSS at the end 154 vs 155 MB, peak 154 vs 160 MB; `up`
      with 1,000 services 131 vs 130 MB (README.md, "Cold plans: the collector ...").
    """
    global _promoted, _full_seen
    full = gc.get_stats()[2]["collections"]
    if full != _full_seen:
        _full_seen, _promoted = full, 0
    _promoted += 1
    if _promoted > FULL_EVERY:
        gc.collect()
        return
    gc.freeze()
    gc.unfreeze()
