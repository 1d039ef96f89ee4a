"""The loader's parse cache: parsed config files by (path, content digest, default profile).

Why: parsing and validating a file is pure (its bytes, its path and the default profile in, a
`ParsedFile` out), so a pass over a tree where one file changed need re-parse that file only. Keys
are content digests, never modification times. Values derived from an entry (the loader's
`LoadedService` with its spec hash) are kept with it and dropped with it. Entries are immutable,
so passes share them; a lock keeps the bookkeeping right when several threads load at once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

from reconciler.config.parse import ParsedFile

T = TypeVar("T")
Key = tuple[str, bytes, str]  # (path relative to the root, content digest, default profile)


class ParseCache:
    """Least recently used entries go first. It holds at least `min_entries` and twice the largest
    tree loaded (a smaller bound would drop every entry of a big tree before its next load: LRU
    over a sequential scan); an entry costs about 7 KB."""

    def __init__(self, min_entries: int = 4_000) -> None:
        self.min_entries = min_entries
        self.max_entries = min_entries
        self.enabled = True  # off: every file parsed every time (the benchmark's "before")
        self._parsed: OrderedDict[Key, ParsedFile] = OrderedDict()
        # id of a cached ParsedFile -> derived values (ids are unique while the entry is cached)
        self._derived: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()
        # the loader's last loads from an index (reconciler.config.loader: a new revision is
        # that load with only its changed files looked at); most recent first
        self.last_loads: list[Any] = []

    def clear(self) -> None:
        with self._lock:
            self._parsed.clear()
            self._derived.clear()
            self.last_loads.clear()
            self.max_entries = self.min_entries

    def fit(self, files: int) -> None:
        """Make room for a tree of `files` config files (and the next revision of it)."""
        with self._lock:
            self.max_entries = max(self.max_entries, 2 * files)

    def parsed(self, key: Key, parse: Callable[[], ParsedFile]) -> ParsedFile:
        if not self.enabled:
            return parse()
        with self._lock:
            found = self._parsed.get(key)
            if found is not None:
                self._parsed.move_to_end(key)
                return found
        made = parse()  # outside the lock: other threads keep loading meanwhile
        with self._lock:
            found = self._parsed.setdefault(key, made)
            if found is made:
                self._derived[id(made)] = {}
            self._parsed.move_to_end(key)
            while len(self._parsed) > self.max_entries:
                _, dropped = self._parsed.popitem(last=False)
                self._derived.pop(id(dropped), None)
        return found

    def derived(self, item: ParsedFile, name: str, make: Callable[[], T]) -> T:
        """`make()` computed once per cached entry and name (every time when `item` is not cached)."""
        # read without the lock: the maps change only under it, and a read sees them before or after
        # (`item` is alive, so an entry under its id is its own)
        known = self._derived.get(id(item)) if self.enabled else None
        if known is not None and name in known:
            value: T = known[name]
            return value
        value = make()
        with self._lock:
            known = self._derived.get(id(item)) if self.enabled else None
            if known is not None:
                known.setdefault(name, value)
                value = known[name]
        return value


PARSE_CACHE = ParseCache()
