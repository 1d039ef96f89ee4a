"""The leading reconciler's link to etcd: its writes fenced, the shared state pulled on takeover.

Why this shape: the engine reads and writes its state directory (state.json, the journal,
routes.json, previews/) and has been proven on it — crash recovery, the hold on unsavable state,
the journal's settle-before-act. With etcd that directory stays the engine's working copy on the
leader's machine, and etcd is the truth every machine shares:

- on taking over, `pull` makes the local copy equal to etcd (state.json, installation.json,
  routes.json, tokens.json, previews/*, every journal entry); the engine is then opened on it and
  `recover()` settles every open intent as after a crash. On the very first leader of a prefix
  with nothing on etcd yet, the local files are pushed up instead (moving a directory install to
  etcd is starting `up --state etcd://…` beside the old state dir as --local-state);
- every journal entry goes to etcd, fenced, *before* it is appended locally (`FencedJournal`): an
  intent is on etcd before its side effect starts, or the side effect does not start (a
  paused-and-woken leader's intent is refused, so its create never runs);
- `FencedStateStore.check` (the engine's question before any action that changes what runs) also
  asks whether the fence still holds, and `save` writes state.json to etcd, fenced;
- routes.json and previews/* are pushed (fenced) within `interval` of a change by `push_changes`;
  signals and other machines' gateway stats are pulled into the local folders the engine's
  loop and autoscaler already read.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

from reconciler.state.errors import StateError
from reconciler.state.etcd_store import EtcdStore
from reconciler.state.journal import JOURNAL_FILE, Journal
from reconciler.state.journal import SCHEMA_VERSION as JOURNAL_SCHEMA
from reconciler.state.records import StateDoc
from reconciler.state.store import STATE_FILE, StateStore
from tidegate.etcd import JOURNAL_PREFIX, LEADER_KEY, PREVIEWS_PREFIX, SIGNALS_PREFIX, STATS_PREFIX
from tidegate.fsio import write_atomic
from tidegate.routes import ROUTES_FILE
from tidegate.signals import SIGNALS_DIR
from tidegate.stats_file import STATS_DIR

log = logging.getLogger("tidegate.state.etcd")

PULLED_DOCS = (STATE_FILE, "installation.json", ROUTES_FILE, "tokens.json")
PUSHED_DOCS = (ROUTES_FILE,)  # state.json goes through FencedStateStore.save
REMOTE_STATS = "stats-remote-"


def journal_key(seq: int) -> str:
    return f"{JOURNAL_PREFIX}{seq:012d}"


class FencedJournal(Journal):
    """The journal, each entry written to etcd (fenced) before the local file."""

    def __init__(self, state_dir: Path, shared: EtcdStore) -> None:
        super().__init__(state_dir)
        self.shared = shared

    def _append(self, entry: dict[str, Any], durable: bool = True) -> int:
        seq = self.seq + 1
        self.shared.put(journal_key(seq), json.dumps({"seq": seq, **entry}, separators=(",", ":")).encode())
        return super()._append(entry, durable)

    def compact(self, upto_seq: int, force: bool = False) -> bool:
        if not super().compact(upto_seq, force):
            return False
        keep = {journal_key(int(e.get("seq", 0))) for e in self._read() if e.get("kind") != "mark"}
        docs: dict[str, bytes | None] = {name: None for name in self.shared.list(JOURNAL_PREFIX) if name not in keep}
        if journal_key(self.seq) not in keep:  # the mark keeps the sequence monotonic for the next leader
            mark = {"seq": self.seq, "kind": "mark", "schema_version": JOURNAL_SCHEMA}
            docs[journal_key(self.seq)] = json.dumps(mark, separators=(",", ":")).encode()
        self.shared.put_many(docs)
        return True


class FencedStateStore(StateStore):
    """The state store whose saves also go to etcd and whose check asks whether we still lead."""

    def __init__(self, state_dir: Path, shared: EtcdStore) -> None:
        super().__init__(state_dir)
        self.shared = shared

    def check(self, doc: StateDoc) -> None:
        super().check(doc)
        self.shared.verify_fence()

    def save(self, doc: StateDoc) -> StateDoc:
        self.shared.verify_fence()
        saved = super().save(doc)
        self.shared.put(STATE_FILE, self.path.read_bytes())
        return saved


class LeaderSync:
    """What a leader keeps in step between its local directory and etcd (see the module doc)."""

    def __init__(self, local_dir: Path, shared: EtcdStore, node: str) -> None:
        self.dir = Path(local_dir)
        self.shared = shared
        self.node = node.replace("/", "_")
        self._pushed: dict[str, bytes] = {}

    def _local(self, name: str) -> bytes | None:
        try:
            return (self.dir / name).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _write(self, name: str, body: bytes) -> None:
        path = self.dir / name
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(path, body, mode=0o600)

    def pull(self) -> str:
        """Make the local copy equal to etcd before the engine opens it (or, with nothing on etcd
        yet, push the local files up). Returns what was done, for the log."""
        entries = self.shared.list(JOURNAL_PREFIX)
        if not entries and all(self.shared.get(n) is None for n in (STATE_FILE, "installation.json")):
            return self._seed()
        for name in PULLED_DOCS:
            body = self.shared.get(name)
            if body is not None:
                self._write(name, body)
        previews = self.shared.list(PREVIEWS_PREFIX)
        for name, body in previews.items():
            self._write(name, body)
        if self.shared.get(STATE_FILE) is None:
            # A leader died before its first save: an older local state.json must not stand in.
            with contextlib.suppress(FileNotFoundError):
                (self.dir / STATE_FILE).unlink()
        self._write(JOURNAL_FILE, b"".join(body.rstrip(b"\n") + b"\n" for body in entries.values()))
        with contextlib.suppress(FileNotFoundError):
            (self.dir / f"{STATE_FILE}.backup").unlink()  # a backup of another lineage's past
        self._pushed = {n: b for n, b in ((n, self._local(n)) for n in PUSHED_DOCS) if b is not None}
        self._pushed.update(previews)
        return f"took over the shared state ({len(entries)} journal entries)"

    def _seed(self) -> str:
        """The first leader of an empty prefix: whatever the local directory holds goes up."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        installation = self._local("installation.json")
        if installation is not None:
            self.shared.create("installation.json", installation)
        docs: dict[str, bytes | None] = {}
        for name in (STATE_FILE, ROUTES_FILE, "tokens.json"):
            body = self._local(name)
            if body is not None:
                docs[name] = body
        journal = Journal(self.dir)
        for entry in journal._read():
            docs[journal_key(int(entry.get("seq", 0)))] = json.dumps(entry, separators=(",", ":")).encode()
        if docs:
            self.shared.put_many(docs)
        self._pushed = {n: b for n, b in docs.items() if b is not None and n in PUSHED_DOCS}
        return f"seeded the shared state from {self.dir} ({len(docs)} documents)" if docs else "a new shared state"

    def after_open(self) -> None:
        """The engine created installation.json on a new prefix: share it (first one wins)."""
        body = self._local("installation.json")
        if body is not None and self.shared.get("installation.json") is None:
            self.shared.create("installation.json", body)

    def push_changes(self) -> None:
        """routes.json and previews/* as they are now on disk, when they changed (fenced)."""
        names = list(PUSHED_DOCS)
        folder = self.dir / PREVIEWS_PREFIX.rstrip("/")
        if folder.is_dir():
            names += [f"{PREVIEWS_PREFIX}{p.name}" for p in sorted(folder.glob("*.json"))]
        changed: dict[str, bytes | None] = {}
        for name in names:
            body = self._local(name)
            if body is not None and self._pushed.get(name) != body:
                changed[name] = body
        if changed:
            self.shared.put_many(changed)
            self._pushed.update({n: b for n, b in changed.items() if b is not None})

    def pull_signals(self) -> int:
        """Signals other machines left on etcd, moved into the local folder the loop watches."""
        signals = self.shared.list(SIGNALS_PREFIX)
        for name, body in signals.items():
            self._write(f"{SIGNALS_DIR}/{name.removeprefix(SIGNALS_PREFIX)}", body)
            self.shared.client.delete(self.shared.key(name))
        return len(signals)

    def pull_stats(self) -> None:
        """Other machines' gateway stats as local files the autoscaler sums (stale ones it skips)."""
        remote = self.shared.list(STATS_PREFIX)
        wanted: set[str] = set()
        for name, body in remote.items():
            short = name.removeprefix(STATS_PREFIX)
            if short.startswith(f"{self.node}-"):
                continue  # this machine's own gateway: its file is already here
            local = f"{REMOTE_STATS}{short}"
            wanted.add(local)
            self._write(f"{STATS_DIR}/{local}", body)
        folder = self.dir / STATS_DIR
        if folder.is_dir():
            for path in folder.glob(f"{REMOTE_STATS}*"):
                if path.name not in wanted:
                    path.unlink(missing_ok=True)

    def tick(self) -> None:
        """One round of the leader's background sync (routes/previews up, signals/stats down)."""
        try:
            self.push_changes()
            self.pull_signals()
            self.pull_stats()
        except StateError as e:
            log.debug("sync with etcd: %s", e)


def post_signal(shared: EtcdStore, kind: str, payload: dict[str, Any]) -> str | None:
    """A signal under `signals/` for whichever reconciler leads (it moves them into the folder its
    loop watches within a fraction of a second: `LeaderSync.pull_signals`). Returns who leads now
    (`host:pid`), None when nobody does (the next leader applies it). Raises EtcdError."""
    client, location = shared.client, shared.location
    body = json.dumps({"kind": kind, "at": time.time(), **payload}).encode()
    client.put(location.key(f"{SIGNALS_PREFIX}{time.time_ns()}-{kind}-{uuid.uuid4().hex[:8]}.json"), body)
    return leader_of(shared)


def leader_of(shared: EtcdStore) -> str | None:
    """Who leads the prefix now (`host:pid`), or None. Raises EtcdError."""
    kv = shared.client.get(shared.location.key(LEADER_KEY))
    return kv.value.decode(errors="replace") if kv is not None else None
