"""What `build_desired` keeps between calls: per loaded file, the parts its file alone decides and
its outcome per set of inputs.

Why a module of its own: the desired set of an unchanged file must be the very same objects at
the next revision (a dict look-up per service), and a cold build must not pay for three memos
per service (reconciler.engine.memo's IdentityMemo builds a key tuple and takes a lock per
insert). One table holds one entry per loaded file (by the parse cache's object, by identity,
the entry holding it so its id is never reused while kept), written once per call under a lock.
Each entry's values are results of pure functions of exactly their key; `memo.clear_all`
empties it and `memo.enabled = False` (reconciler.engine.desired) leaves it unread.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from reconciler.config.loader import LoadedService
from reconciler.engine import memo
from reconciler.engine.desired_parts import FileParts

if TYPE_CHECKING:
    from reconciler.engine.desired_service import DesiredService


@dataclass(slots=True)
class Outcome:
    service: DesiredService | None
    blocked: str = ""
    warning: str = ""
    files: tuple[tuple[str, str | None], ...] = ()  # (backend, the code hash it used)


class File:
    """A loaded file's parts (`FileParts`) and its outcomes by inputs (`key_id`), kept by the
    parse cache's object: each is the result of a pure function of exactly its key."""

    __slots__ = ("domain", "ls", "name", "outcomes", "parts")

    def __init__(self, ls: LoadedService, name: str, domain: str, parts: FileParts, kid: int, out: Outcome) -> None:
        self.ls = ls  # held: its id is not reused while kept
        self.name = name
        self.domain = domain
        self.parts = parts
        self.outcomes = {kid: out}


# id of the loaded file -> its entry; insertion-ordered, the oldest half dropped when full. Read
# without the lock (a dict look-up is atomic); written under it, once per call.
FILES: dict[int, File] = {}
_MIN_ENTRIES = 4_000  # entries kept at least; more for a bigger repo (4 per service: its next revisions)
_PER_FILE = 8  # outcomes per file: production's inputs, a pull request plan's, ...
_LOCK = threading.Lock()
# the inputs' key -> a number never given twice (an outcome's key in `File.outcomes`, so a
# look-up hashes an int, not the key); a few keys per process, started over when many
_KEY_IDS: dict[tuple[object, ...], int] = {}
_KEY_COUNT = itertools.count()


def _clear() -> None:
    with _LOCK:
        FILES.clear()
        _KEY_IDS.clear()


memo.on_clear(_clear)


def key_id(key: tuple[object, ...]) -> int:
    found = _KEY_IDS.get(key)
    if found is None:
        with _LOCK:
            if len(_KEY_IDS) >= 256:
                _KEY_IDS.clear()  # the old numbers are never given again: their outcomes age out
            found = _KEY_IDS.setdefault(key, next(_KEY_COUNT))
    return found


def keep(new: dict[int, File], more: list[tuple[File, Outcome]], kid: int, services: int) -> None:
    """Keep a call's files first seen (`new`, by id) and its outcomes of kept files (`more`) under
    `kid`. A file another call kept meanwhile is replaced: its other outcomes are made again."""
    with _LOCK:
        FILES.update(new)
        for entry, out in more:
            entry.outcomes[kid] = out
            if len(entry.outcomes) > _PER_FILE:
                del entry.outcomes[next(iter(entry.outcomes))]
        limit = max(_MIN_ENTRIES, 4 * services)
        if len(FILES) > limit:
            kept = list(FILES.items())[len(FILES) - limit // 2 :]  # the newest half
            FILES.clear()
            FILES.update(kept)
