"""Publishing routes.json and deciding whether a pass may act: the engine's guard on its outputs.

Why: the engine's outputs are state.json (what runs, saved by the StateStore), the journal and
routes.json (what the gateway serves). An action whose outcome cannot be saved is how a rolling
update became an outage: new replicas started, old ones deleted, the save failed, routes.json
never followed and every request got 502. So before acting, `hold_reason` asks whether all of it
could be written (state.json still ours and readable, routes.json not of a newer schema, the
directory takes a write); when not, the pass holds: no create, no delete, the last published
routes kept (put back if the file went missing), and why is logged once (`fault`).

routes.json is written when the routes change *or* when the file on disk is not the one last
written here (deleted, replaced): level-triggered, like everything else in a pass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from reconciler.state.errors import StateError, StateUnreadableError, StateUnwritableError
from reconciler.state.journal import Journal
from reconciler.state.records import StateDoc
from reconciler.state.store import Stamp, StateStore, stamp_of
from tidegate.fsio import describe_os_error, free_bytes
from tidegate.routes import ROUTES_FILE, RoutesSnapshot
from tidegate.routes_io import RoutesSchemaError, check_schema, write_snapshot

log = logging.getLogger("tidegate.engine")

# Below this many free bytes on the state's filesystem even an idle pass probes a write, so a full
# disk is said at once (not only when a push next asks for an action).
DISK_FULL_BELOW = 256 * 1024


class Outputs:
    """routes.json as last written, the journal's compaction, and why passes hold (if they do)."""

    def __init__(self, state_dir: Path, store: StateStore, journal: Journal, after_routes: Callable[[], None]) -> None:
        self.state_dir = state_dir
        self.store = store
        self.journal = journal
        self._after_routes = after_routes  # the fault-injection hook of crash tests
        self.fault: str | None = None
        self.routes_key: str | None = None  # the routes last written (serial left out)
        self._routes_body: bytes | None = None
        self._routes_last: RoutesSnapshot | None = None  # the routes last written, serial 0
        self._routes_stamp: Stamp | None = None

    @property
    def routes_path(self) -> Path:
        return self.state_dir / ROUTES_FILE

    def publish_routes(self, build: Callable[[], RoutesSnapshot], force: bool = False, hold: bool = False) -> bool:
        """Write routes.json when they changed, or when the file on disk is not the one last
        written here. `hold`: never publish new routes, only put the last written file back."""
        path = self.routes_path
        on_disk = stamp_of(path)
        intact = on_disk is not None and on_disk == self._routes_stamp
        self._check_routes(intact)
        if hold:
            if intact or self._routes_body is None:
                return False
            body, key = self._routes_body, self.routes_key
        else:
            snap = build()
            unnumbered = snap.model_copy(update={"serial": 0})
            # Compared as values first (unchanged routes are the same objects, see
            # state.view.build_routes): no JSON is made for a pass that changes nothing.
            if not force and unnumbered == self._routes_last and intact:
                return False
            key = unnumbered.model_dump_json()
            if not force and key == self.routes_key and intact:
                self._routes_last = unnumbered
                return False
            body = snap.model_dump_json(indent=2).encode()
        try:
            write_snapshot(self.state_dir, body)
        except OSError as e:
            raise StateUnwritableError(describe_os_error(e, path)) from e
        if on_disk is None and self._routes_stamp is not None:
            log.warning("%s was missing: published the routes again", path)
        self.routes_key, self._routes_body, self._routes_stamp = key, body, stamp_of(path)
        self._routes_last = unnumbered if not hold else None
        self._after_routes()
        return True

    def _check_routes(self, intact: bool) -> None:
        """A routes.json that is not ours and carries a newer schema is refused, never rewritten."""
        if intact or not self.routes_path.exists():
            return
        try:
            check_schema(self.routes_path)
        except RoutesSchemaError as e:
            raise StateUnreadableError(str(e)) from e

    def compact(self, upto_seq: int) -> None:
        try:
            self.journal.compact(upto_seq)
        except OSError as e:
            raise StateUnwritableError(describe_os_error(e, self.journal.path)) from e

    def hold_reason(self, doc: StateDoc, acting: bool) -> str | None:
        """Why this pass must not act, or None. Acting, already holding or nearly out of space:
        the full check, including a probe write; otherwise only whether state.json is still the
        one last written (a stat)."""
        try:
            free = free_bytes(self.state_dir)
            low = free is not None and free < DISK_FULL_BELOW
            if acting or low or self.fault is not None:
                self.store.check(doc)
                self._check_routes(stamp_of(self.routes_path) == self._routes_stamp)
            else:
                self.store.verify(doc)
        except StateError as e:
            return str(e)
        return None

    def set_fault(self, reason: str | None) -> None:
        """Remember why passes hold their actions; log it once per distinct reason."""
        if reason == self.fault:
            return
        if reason is not None:
            log.error("%s; taking no action that changes what runs until the state can be saved", reason)
        else:
            log.warning("the state can be saved again (%s): resuming", self.store.path)
        self.fault = reason
