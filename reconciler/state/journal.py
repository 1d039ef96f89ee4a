"""The apply journal: an append-only record of every side effect, written before it happens.

Why: between "ask the backend to create replica X" and "state.json says X exists" the process can
die. The intent line (fsynced before the call) is how the next start knows to ask the backend
about X. Lines are JSON objects with a monotonically increasing `seq`:

    {"seq": 7, "kind": "intent", "op": "create", "replica": "web-1a2b3c4d-0", "service": "web",
     "backend": "local", "intent_id": "…", "at": 1700000000.0}
    {"seq": 8, "kind": "outcome", "intent_id": "…", "outcome": "ok" | "error" | "settled", …}

Intents are fsynced before the side effect; outcomes are not (see `outcome`).

`state.json` records the last `seq` its contents reflect (`journal_seq`); on start every intent
after it is settled by asking the backend (see engine.Engine.recover). No env values are ever
written here: an outcome's `message` (a backend error) arrives already masked (reconciler.apply),
and lines are serialised as they are, never rewritten as text. The file is 0600 (created so, and
tightened by the state store on start). A torn last line (crash mid-append) is ignored.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from reconciler.state.errors import StateUnreadableError
from tidegate.fsio import write_atomic

JOURNAL_FILE = "journal.jsonl"
COMPACT_AFTER = 5000  # lines
# Carried by the compaction mark; a journal with a line of a newer schema is refused (never
# appended to or compacted), as state.json and routes.json are.
SCHEMA_VERSION = 1


class Op(StrEnum):
    CREATE = "create"
    DELETE = "delete"


@dataclass(frozen=True)
class Intent:
    seq: int
    intent_id: str
    op: Op
    replica: str
    service: str
    backend: str
    at: float
    outcome: str | None = None  # None while open


class Journal:
    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / JOURNAL_FILE
        self._seq = 0
        self._lines = 0
        # Workers append concurrently (reconciler.engine.workqueue): one lock orders the lines, and
        # the intents this process opened and not yet closed are kept so that `state.json` never
        # claims a `journal_seq` past an operation still in flight (see `settled_seq`).
        self._lock = threading.RLock()
        self._open: dict[str, int] = {}
        for entry in self._read():
            version = entry.get("schema_version", SCHEMA_VERSION)
            if not isinstance(version, int) or version > SCHEMA_VERSION:
                raise StateUnreadableError(
                    f"{self.path} has schema_version {version!r}; this tidegate reads up to {SCHEMA_VERSION} "
                    "and will not rewrite it (a newer tidegate wrote it)"
                )
            self._seq = max(self._seq, int(entry.get("seq", 0)))
            self._lines += 1

    @property
    def seq(self) -> int:
        return self._seq

    @property
    def settled_seq(self) -> int:
        """The highest seq the state may record as reflected: below the oldest intent still open in
        this process (a backend call in flight on a worker), else `seq`. A crash then settles that
        intent on the next start, as if the state had been written before it."""
        with self._lock:
            return min(self._open.values()) - 1 if self._open else self._seq

    def open_intents(self) -> int:
        """Intents this process opened whose outcome is not written yet (calls in flight)."""
        with self._lock:
            return len(self._open)

    def _read(self) -> Iterator[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                for line in f:
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        continue  # torn write at the end of a crashed append
                    if isinstance(entry, dict):
                        yield entry
        except FileNotFoundError:
            return

    def _append(self, entry: dict[str, Any], durable: bool = True) -> int:
        with self._lock:
            return self._append_locked(entry, durable)

    def _append_locked(self, entry: dict[str, Any], durable: bool) -> int:
        self._seq += 1
        entry = {"seq": self._seq, **entry}
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (json.dumps(entry, separators=(",", ":")) + "\n").encode())
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        self._lines += 1
        return self._seq

    def intent(self, op: Op, replica: str, service: str, backend: str, at: float) -> str:
        intent_id = uuid.uuid4().hex[:16]
        with self._lock:
            self._open[intent_id] = self._append(
                {
                    "kind": "intent",
                    "op": op.value,
                    "replica": replica,
                    "service": service,
                    "backend": backend,
                    "intent_id": intent_id,
                    "at": at,
                }
            )
        return intent_id

    def outcome(self, intent_id: str, outcome: str, at: float, message: str | None = None) -> None:
        entry: dict[str, Any] = {"kind": "outcome", "intent_id": intent_id, "outcome": outcome, "at": at}
        if message:
            entry["message"] = message[:500]
        # Not fsynced: an outcome is advisory. Recovery asks the backend about every intent newer
        # than the state whether or not its outcome survived, so losing one to a power cut is safe
        # (a killed process loses nothing: the write is already in the page cache).
        with self._lock:
            self._open.pop(intent_id, None)
            self._append(entry, durable=False)

    def intents_after(self, seq: int) -> list[Intent]:
        """Intents appended after `seq` (or still open from before it), with their outcome if any."""
        intents: dict[str, Intent] = {}
        outcomes: dict[str, str] = {}
        for e in self._read():
            if e.get("kind") == "intent":
                try:
                    intents[str(e["intent_id"])] = Intent(
                        seq=int(e["seq"]),
                        intent_id=str(e["intent_id"]),
                        op=Op(e["op"]),
                        replica=str(e["replica"]),
                        service=str(e.get("service", "")),
                        backend=str(e["backend"]),
                        at=float(e.get("at", 0.0)),
                    )
                except (KeyError, ValueError):
                    continue
            elif e.get("kind") == "outcome":
                outcomes[str(e.get("intent_id"))] = str(e.get("outcome"))
        out = []
        for i in intents.values():
            outcome = outcomes.get(i.intent_id)
            if i.seq > seq or outcome is None:
                out.append(Intent(i.seq, i.intent_id, i.op, i.replica, i.service, i.backend, i.at, outcome))
        return sorted(out, key=lambda i: i.seq)

    def compact(self, upto_seq: int, force: bool = False) -> bool:
        """Drop settled entries at or before `upto_seq` once the file is large. Keeps open intents."""
        with self._lock:
            return self._compact_locked(upto_seq, force)

    def _compact_locked(self, upto_seq: int, force: bool) -> bool:
        if not force and self._lines < COMPACT_AFTER:
            return False
        keep_ids = {i.intent_id for i in self.intents_after(upto_seq)}
        kept = [
            e for e in self._read() if int(e.get("seq", 0)) > upto_seq or str(e.get("intent_id")) in keep_ids
        ]
        # A mark keeps the sequence monotonic across restarts even when everything was dropped.
        kept.insert(0, {"seq": self._seq, "kind": "mark", "schema_version": SCHEMA_VERSION})
        body = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in kept)
        write_atomic(self.path, body.encode(), mode=0o600)
        self._lines = len(kept)
        return True
