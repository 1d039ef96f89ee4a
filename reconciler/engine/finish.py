"""The end of a pass: records synced, state saved, routes published, events logged; or, when the
state cannot be persisted, the pass held.

Why a module of its own: the engine's pass (reconciler.engine.reconcile) decides and applies; this
mixin is what it writes afterwards and in what order (state before routes, see
reconciler.engine.persist), kept out of the decision half like ReplicaMasking keeps the masking.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from reconciler.engine import settled as settled_mod
from reconciler.engine.apply import FaultHook, ServiceOutcome
from reconciler.engine.autoscale import ScalingDecision
from reconciler.engine.desired import DesiredService, DesiredSet
from reconciler.engine.desired_loader import DesiredLoader
from reconciler.engine.liveness import LiveDue, recheck_in
from reconciler.engine.observe import readiness_due_in
from reconciler.engine.persist import Outputs
from reconciler.engine.plan import Desired, Plan
from reconciler.engine.schedule import next_run_in
from reconciler.engine.settled import Entry, Fingerprint, Settled, doc_key, fingerprint
from reconciler.engine.targets import sync_records
from reconciler.engine.values import DesiredExtension, EngineSettings, PassReport, SnapshotLike
from reconciler.state.errors import StateError
from reconciler.state.journal import Journal
from reconciler.state.records import SnapshotRef, StateDoc
from reconciler.state.store import StateStore
from reconciler.state.view import build_routes
from tidegate.routes import RoutesSnapshot

log = logging.getLogger("tidegate.engine")

MAX_DIAGNOSTICS = 20  # config diagnostics kept in the state for `ps`
# A held pass looks again this soon (not the whole interval): the roll it holds resumes within
# seconds of the state becoming writable. The check is a stat, a statvfs and one small write.
HELD_RECHECK = 5.0


def _sooner(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


class PassFinish:
    """Mixed into the Engine, which sets these attributes."""

    doc: StateDoc
    lock: Any  # the engine's RLock (reconciler.engine.reconcile)
    clock: Callable[[], float]
    settings: EngineSettings
    extension: DesiredExtension | None
    store: StateStore
    journal: Journal
    outputs: Outputs
    _fault: FaultHook
    _closing: bool
    _last_saved: str
    _last_checkpoint: float
    _loader: DesiredLoader
    _demand: set[str]
    _scaling_reason: dict[str, str]
    _logged_events: dict[str, set[int]]
    _settled: Settled
    _saved_fps: tuple[object, dict[str, Fingerprint], tuple[object, ...]] | None
    _routes_memo: tuple[object, dict[str, Fingerprint], object, RoutesSnapshot] | None
    _ready_cadence: dict[str, tuple[float, float]]
    _hot_now: set[str]
    _last_probe: dict[str, float]
    _live_oldest: LiveDue

    def _dump(self) -> str:
        """The document as compared with what was last saved (serial and updated_at left out).
        Only records edited since their last serialization are serialized again (the store keeps
        each record's text by its versions, reconciler.state.doc_json)."""
        if not settled_mod.enabled:  # the benchmark's "before": the whole document each time
            return self.doc.model_dump_json(exclude={"serial", "updated_at"})
        return self.store.comparable(self.doc)

    def _fingerprints(self) -> dict[str, Fingerprint] | None:
        if not settled_mod.enabled:
            return None
        return {n: fingerprint(r) for n, r in self.doc.services.items()}

    def _save(self, force: bool = False, fps: dict[str, Fingerprint] | None = None) -> bool:
        """Write the state when it differs from what was last saved. `fps`: the fingerprints of
        the records now (reconciler.engine.settled); equal to those of the document as last saved
        (and the document's own fields equal), it is not even serialized to compare."""
        with self.lock:
            if self._closing:
                return False
            # Not past an intent still in flight on a worker: a crash now settles it on restart.
            self.doc.journal_seq = self.journal.settled_seq
            key = doc_key(self.doc)
            known = self._saved_fps
            if not force and fps is not None and known is not None and known[0] is self.doc and known[2] == key and known[1] == fps:
                return False
            dumped = self._dump()
            if fps is None:
                fps = self._fingerprints()
            if not force and dumped == self._last_saved:
                self._saved_fps = (self.doc, fps, key) if fps is not None else None
                return False
            self._saved_fps = None  # until the save below succeeded
            self.store.save(self.doc)
            self._last_saved = dumped  # serial and updated_at, all save changes, are not in it
            self._saved_fps = (self.doc, fps, key) if fps is not None else None
            self._last_checkpoint = self.clock()
            if self.journal.open_intents():
                self._fault("open_state_write")
            self._fault("after_state_write")
            return True

    @property
    def state_fault(self) -> str | None:
        """Why passes take no action that changes what runs (the state cannot be saved), or None."""
        return self.outputs.fault

    def _publish_routes(self, force: bool = False, hold: bool = False, fps: dict[str, Fingerprint] | None = None) -> bool:
        return self.outputs.publish_routes(lambda: self._routes(fps), force=force, hold=hold)

    def _routes(self, fps: dict[str, Fingerprint] | None) -> RoutesSnapshot:
        """`routes`, rebuilt only when a record's fingerprint (`fps`, the records now) or the preview
        PRs changed since the last build (the revision and serial are the document's own)."""
        prs = self.extension.preview_prs() if self.extension is not None else None
        revision = self.doc.last_snapshot.revision if self.doc.last_snapshot else None
        memo = self._routes_memo
        fresh = memo is not None and memo[0] is self.doc and memo[2] == prs and memo[3].revision == revision
        if fps is not None and memo is not None and fresh and memo[1] == fps:
            return memo[3].model_copy(update={"serial": self.doc.serial})
        snap = build_routes(self.doc, self.settings.domain, prs)
        self._routes_memo = (self.doc, fps, prs, snap) if fps is not None else None
        return snap

    def _compact(self) -> None:
        self.outputs.compact(self.doc.journal_seq)

    def _finish(
        self,
        snapshot: SnapshotLike | None,
        ds: DesiredSet | None,
        p: Plan,
        notes: list[str],
        decisions: Mapping[str, ScalingDecision],
        desired: Desired,
        last_good: Mapping[str, DesiredService],
        specs: Mapping[str, DesiredService],
        outcomes: Sequence[ServiceOutcome],
        now: float,
        skipping: tuple[Mapping[str, Entry], set[str]],
        relocked: bool = False,
    ) -> PassReport:
        """After apply (or dispatch): records synced, then state saved and routes published.
        `skipping`: the settled services the plan skipped (reconciler.engine.settled) and the busy
        ones. `relocked`: the lock was let go since (anything may have changed meanwhile): nothing
        more is skipped, and nothing settles."""
        doc = self.doc
        skipped, busy = skipping
        clean: Mapping[str, Entry] = {} if relocked else skipped
        if ds is not None:
            sync_records(doc, ds, decisions, desired, now, self._scaling_reason, last_good, skip=clean)
            self._loader.remember(specs, doc.services, ds)
            if snapshot is not None:
                doc.last_snapshot = SnapshotRef(
                    revision=snapshot.revision,
                    root=str(Path(snapshot.root).absolute()),
                    config_path=snapshot.config_path,
                    diagnostics=list(ds.diagnostics[:MAX_DIAGNOSTICS]),
                )
        # A demand is answered by the decision it fed (or moot: stopped, removed, blocked).
        self._demand -= set(decisions) | (self._demand - set(ds.services if ds else ()))
        self._logged_events = _log_events(p, doc, now, self._logged_events, clean)
        after: dict[str, Fingerprint] | None = None
        if settled_mod.enabled:
            after = {n: (clean[n].fp if n in clean else fingerprint(r)) for n, r in doc.services.items()}
            if ds is not None and not relocked:
                dirty = doc.services.keys() - clean.keys()
                self._settled.update(doc, ds.services, desired.services, decisions, p, after, dirty, busy, ds.revision)
        wrote = routes = False
        try:
            wrote = self._save(fps=after)
            routes = self._publish_routes(force=self.outputs.routes_key is None, fps=after)
            self._compact()
        except StateError as e:
            self.outputs.set_fault(str(e))
            if outcomes and not routes:
                # The state broke between the check and the save, after actions ran: the routes
                # must follow what now runs (the old replicas may be gone), saved or not.
                with contextlib.suppress(StateError):
                    routes = self._publish_routes()
        else:
            self.outputs.set_fault(None)
        return PassReport(
            ds.revision if ds else None,
            p,
            tuple(outcomes),
            wrote,
            routes,
            tuple(notes) + p.notes,
            _sooner(next_run_in(self.doc, now, self.settings.drain_min, skip=clean), readiness_due_in(self.doc, self._ready_cadence, self._hot_now, now)),
            recheck_in(self.doc, now, self.settings.recheck_interval, self._last_probe, clean, self._live_oldest),
        )

    def _held(self, ds: DesiredSet | None, p: Plan, notes: tuple[str, ...], now: float, reason: str) -> PassReport:
        """A pass that found the state cannot be persisted: nothing applied, nothing saved, the
        last published routes kept (put back if the file went missing)."""
        self.outputs.set_fault(reason)
        routes = False
        try:
            routes = self._publish_routes(hold=True)
        except StateError as e:
            log.debug("routes: %s", e)
        return PassReport(
            ds.revision if ds else None,
            p,
            (),
            False,
            routes,
            (*notes, f"held: {reason}"),
            HELD_RECHECK,
            recheck_in(self.doc, now, self.settings.recheck_interval, self._last_probe),
        )

    def _checkpoint(self) -> None:
        if self.clock() - self._last_checkpoint >= self.settings.checkpoint_interval:
            try:
                self._save()
            except StateError as e:  # mid-apply: the final save will say it again, the next pass holds
                self.outputs.set_fault(str(e))

    @property
    def routes(self) -> RoutesSnapshot:
        prs = self.extension.preview_prs() if self.extension is not None else None
        return build_routes(self.doc, self.settings.domain, prs)


def _log_events(
    p: Plan, doc: StateDoc, now: float, logged: dict[str, set[int]], skip: Collection[str] = ()
) -> dict[str, set[int]]:
    """One log line per event of this pass (service, what, why): the steps applied and what the
    records noted (ready, failed, probe failed, scaled…), each history entry once (`logged`: per
    service, the ids of entries already logged; returned for the next pass). `skip`: settled
    services, whose history did not change. `extra` carries the same fields for
    `up --log-format json`."""
    seen: dict[str, set[int]] = {}
    for step in p.steps:
        what = str(step.action).replace("_", " ") + (f" {step.replica}" if step.replica else "")
        log.info("%s: %s (%s)", step.service, what, step.reason or "-",
                 extra={"service": step.service, "event": str(step.action), "detail": step.reason})  # fmt: skip
    for name, rec in doc.services.items():
        if name in skip and name in logged:
            seen[name] = logged[name]
            continue
        before, ids = logged.get(name, set()), seen.setdefault(name, set())
        for h in rec.history:
            ids.add(id(h))
            if h.at >= now and id(h) not in before:
                log.info("%s: %s: %s", name, h.event, h.detail or "-",
                         extra={"service": name, "event": h.event, "detail": h.detail})  # fmt: skip
    return seen
