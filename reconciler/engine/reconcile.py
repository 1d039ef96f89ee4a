"""The engine: one level-triggered reconcile pass, and everything the CLI asks of the state dir.

Why: the loop (reconciler.engine.loop), `tidegate apply`, `plan`, `ps`, `stop` and `start` all need the
same sequence — desired state from a snapshot, actual state from the state dir and the backends,
a pure plan, an apply that journals every side effect, readiness probes, then state and routes
written in that order. `reconcile()` is idempotent: calling it every few seconds with nothing
changed and nothing drifted does no backend writes and no file writes.

The values it takes and returns live in reconciler.engine.values, loading (and remembering) desired
sets in reconciler.engine.desired_loader, the offer choice in reconciler.engine.offers and the
next-run time in reconciler.engine.schedule. What a pass writes once it has applied (state, then
routes) is in reconciler.engine.finish, what the CLI asks besides a pass (plan, status, stop,
start) in reconciler.engine.asks, the masking of replica output in reconciler.engine.masking:
mixins of `Engine`.

With `EngineSettings.workers` > 0 (what `up` and `apply` run) the apply half goes to a bounded pool
(reconciler.engine.dispatch): each service's steps on their own worker, the pass holding
`Engine.lock` for its decisions and its writes and the workers holding it only to journal and
record. The state written never claims a journal intent still in flight (`Journal.settled_seq`).

One process owns a state dir (`Engine(read_only=False)` takes the lock); `read_only=True` is for
`plan`/`ps` in another terminal: it reads state and asks backends, but never writes.

Services that a pass found nothing to do for are *settled* (reconciler.engine.settled): while
their desired object and record versions stay the same, later passes skip their targets, plan,
sync, probes not due, state serialization and routes; observation still lists every backend.

When the state cannot be persisted (state.json unreadable or changed under us, the disk full or
read-only) a pass takes no action that changes what runs (see reconciler.engine.persist): it still
observes and probes, keeps the last published routes, says why once in the log (`state_fault`),
and resumes by itself once the state can be written again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from backends.base import BackendRegistry, ReplicaInfo
from reconciler.engine import memo
from reconciler.engine.apply import ApplyContext, FaultHook, ServiceOutcome, apply_plan
from reconciler.engine.asks import EngineAsks
from reconciler.engine.autoscale import ScalingDecision, ServiceStats
from reconciler.engine.desired import DesiredService, DesiredSet, Specs
from reconciler.engine.desired_loader import DesiredLoader
from reconciler.engine.dispatch import Dispatcher
from reconciler.engine.finish import PassFinish
from reconciler.engine.liveness import LiveDue, recheck_ready
from reconciler.engine.observe import (
    ObserveSettings,
    Prober,
    list_backends,
    observe,
    probe_pending,
    settle_journal,
)
from reconciler.engine.pass_inputs import DesiredMaps, note_in_flight
from reconciler.engine.persist import Outputs
from reconciler.engine.plan import Action, Desired, Plan, Step, plan
from reconciler.engine.probe import HttpProber, probe_alive, probe_http, probe_replica
from reconciler.engine.settled import Entry, Fingerprint, Settled, fingerprint
from reconciler.engine.targets import TargetSettings, build_targets
from reconciler.engine.values import (
    DesiredExtension,
    EngineSettings,
    PassReport,
    PlanResult,
    Snapshot,
    SnapshotLike,
)
from reconciler.state.errors import StateError
from reconciler.state.journal import Journal
from reconciler.state.redact import SecretBook
from reconciler.state.store import StateStore
from tidegate.routes import RoutesSnapshot

# The values live in reconciler.engine.values; they stay importable from here.
__all__ = [
    "DesiredExtension",
    "Engine",
    "EngineSettings",
    "PassReport",
    "PlanResult",
    "Snapshot",
    "SnapshotLike",
]

log = logging.getLogger("tidegate.engine")

DEMAND_HOT = 30.0  # a demand signal keeps its service's readiness probes fast this long

# `close()` waits this long for work running on workers before it returns (their intents are
# journaled, so whatever is cut short is settled by the next start).
STOP_TIMEOUT = 10.0

# What `_decide` hands to the apply half of a pass.
_Decided = tuple[
    DesiredSet | None,
    Plan,
    list[str],
    Mapping[str, ScalingDecision],
    Desired,
    Mapping[str, DesiredService],
    float,
    Mapping[str, Entry],
    set[str],
]


class Engine(EngineAsks, PassFinish):
    def __init__(
        self,
        state_dir: Path,
        backends: BackendRegistry,
        settings: EngineSettings | None = None,
        clock: Callable[[], float] = time.time,
        stats: Callable[[], Mapping[str, ServiceStats]] | None = None,
        prober: Prober | None = None,
        read_only: bool = False,
        extension: DesiredExtension | None = None,
        http_prober: HttpProber = probe_http,
        live_prober: Prober | None = None,
        make_store: Callable[[Path], StateStore] = StateStore,
        make_journal: Callable[[Path], Journal] = Journal,
    ) -> None:
        self.state_dir = Path(state_dir)
        # Previews (or None): services beyond production's config, added to every desired set.
        self.extension = extension
        self.backends = backends
        self.settings = settings or EngineSettings()
        self.clock = clock
        self.read_only = read_only
        # The state store and journal (etcd-fenced ones on a leader sharing its state, see
        # reconciler.state.etcd_sync); the directory's own by default.
        self.store = make_store(self.state_dir)
        if not read_only:
            self.store.acquire()
        self.installation = self.store.installation(create=not read_only)
        # The secret values this process knows (its env + every resolved desired set), found by
        # the salted hashes records carry; masks replica output before it is stored or shown.
        self.secrets = SecretBook(self.installation.salt, self.settings.env)
        self.journal = make_journal(self.state_dir)
        self.doc = self.store.load()
        self._stats = stats
        self._prober: Prober = prober or probe_replica
        self._http_prober = http_prober  # dstack `probes:` (a service's own readiness requests)
        self._live_prober = live_prober  # liveness; None: `probe_alive`, or an injected `prober`
        # Per service: its history entries already logged (ids, this process).
        self._logged_events: dict[str, set[int]] = {}
        self._fault = FaultHook(
            self.settings.fault or os.environ.get("TIDEGATE_FAULT"), os.environ.get("TIDEGATE_FAULT_STALL")
        )
        self._observe = ObserveSettings(
            probe_timeout=self.settings.probe_timeout,
            ready_timeout=self.settings.ready_timeout,
            backoff_base=self.settings.backoff_base,
            backoff_max=self.settings.backoff_max,
            recheck_interval=self.settings.recheck_interval,
            unhealthy_threshold=self.settings.unhealthy_threshold,
        )
        self._target_settings = TargetSettings(
            allow_empty=self.settings.allow_empty,
            drain_grace=self.settings.drain_grace,
            drain_min=self.settings.drain_min,
        )
        self._loader = DesiredLoader(self.settings, self.installation.salt, backends, self.secrets)
        self._demand: set[str] = set()
        self._scaling_reason: dict[str, str] = {}
        self.outputs = Outputs(self.state_dir, self.store, self.journal, lambda: self._fault("after_routes"))
        self._last_saved: str = self._dump()
        self._last_checkpoint = 0.0
        self._last_probe: dict[str, float] = {}  # replica id -> last liveness probe (in memory only)
        # Starting replica id -> (next readiness probe due, step); services with a held request
        # -> when the demand was noted (their starting replicas are probed fast).
        self._ready_cadence: dict[str, tuple[float, float]] = {}
        self._demand_at: dict[str, float] = {}
        self._hot_now: set[str] = set()  # the last pass's services with requests held (fast probes)
        # One lock over the state document, the journal and the state file: the pass, the workers
        # and the state writer take it; backend calls run outside it (reconciler.engine.apply).
        self.lock = threading.RLock()
        self._closing = False
        self._in_use: set[str] = set()  # backends the last pass's desired set used
        # Services a pass may skip (reconciler.engine.settled), and the document's fingerprints
        # as of `_last_saved` (the state is serialized again only when one differs).
        self._settled = Settled()
        self._maps = DesiredMaps()  # the desired set's per-service maps
        self._in_flight_at: set[str] = set()  # services with a replica's in_flight above 0
        # Per service: its READY replicas' oldest liveness probe and their interval (liveness).
        self._live_oldest = LiveDue()
        self._saved_fps: tuple[object, dict[str, Fingerprint], tuple[object, ...]] | None = None
        self._routes_memo: tuple[object, dict[str, Fingerprint], object, RoutesSnapshot] | None = None
        self._dispatch: Dispatcher | None = None
        if self.settings.workers > 0 and not read_only:
            self._dispatch = Dispatcher(
                self.settings.workers, self._apply_service, self.settings.backoff_base, self.settings.backoff_max
            )

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def owner(self) -> str:
        return self.installation.id

    @property
    def on_settled(self) -> Callable[[str], None] | None:
        """Called (from a worker thread) when a service's dispatched work settled."""
        return self._dispatch.on_settled if self._dispatch is not None else None

    @on_settled.setter
    def on_settled(self, fn: Callable[[str], None] | None) -> None:
        if self._dispatch is not None:
            self._dispatch.on_settled = fn

    def busy(self) -> set[str]:
        """Services whose backend work is queued or running on a worker."""
        return self._dispatch.busy() if self._dispatch is not None else set()

    def close(self) -> None:
        try:
            if self._dispatch is not None:
                left = self._dispatch.stop(STOP_TIMEOUT)
                if left:
                    log.warning("stopping with backend work still running for %s (settled on the next start)", ", ".join(left))
            with self.lock:
                self._closing = True  # a worker that returns late writes no state after release
            self.backends.close()
        finally:
            self.store.release()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def recover(self) -> list[str]:
        """On start: settle every journal intent newer than the state, then publish routes. A state
        that cannot be saved is not fatal here: it becomes `state_fault` and passes hold."""
        self._require_owner()
        done = settle_journal(self.doc, self.journal, self.backends, self.clock())
        for line in done:
            log.info("recovery: %s", line)
        try:
            self._save(force=bool(done))
            self._compact()
            self._publish_routes(force=True)
        except StateError as e:
            self.outputs.set_fault(str(e))
        return done

    # -- the pass --------------------------------------------------------------------------------
    def note_demand(self, service: str) -> None:
        """A request is held for `service` at zero replicas: scale it to at least one at once."""
        self._demand.add(service)
        self._demand_at[service] = self.clock()

    def _hot(self, stats: Mapping[str, ServiceStats], now: float) -> set[str]:
        """Services with requests held for a cold start (stats, or a demand signal of the last
        DEMAND_HOT s): their starting replicas are probed every ~100 ms."""
        for name in [n for n, at in self._demand_at.items() if now - at > DEMAND_HOT]:
            del self._demand_at[name]
        return {n for n, st in stats.items() if st.held > 0} | set(self._demand_at)

    def _liveness_prober(self) -> Prober:
        if self._live_prober is not None:
            return self._live_prober
        return probe_alive if self._prober is probe_replica else self._prober

    def reconcile(self, snapshot: SnapshotLike | None = None, wait: bool = True) -> PassReport:
        """One pass: desired vs actual, plan, apply, probe, then state and routes (in that order).

        With workers (`EngineSettings.workers` > 0) each service's steps run on the worker pool
        (reconciler.engine.dispatch): `wait` (the `apply` command) waits for them before writing
        state and routes; `wait=False` (the `up` loop) returns at once, and each service's work
        wakes the loop when it settles (`on_settled`). Services with work still running are left
        out of this pass's plan."""
        self._require_owner()
        # The backends are listed before the lock is taken (a cloud API call must not hold the
        # workers up); services busy at that moment are left alone by this pass's observe, so a
        # replica a worker records meanwhile is never mistaken for one that vanished.
        busy_before = self.busy()
        listings = None
        if self._dispatch is not None:
            with self.lock:
                names = {r.backend for rec in self.doc.services.values() for r in rec.replicas}
            listings = list_backends(self.backends, names | self._in_use)
        with self.lock:
            with memo.gc_paused():  # a pass over thousands of services: no collection midway
                ready = self._decide(snapshot, busy_before, listings)
            if isinstance(ready, PassReport):
                return ready
            ds, p, notes, decisions, desired, last_good, now, clean, busy = ready
            specs = Specs({**last_good, **(ds.services if ds else {})}, ds.at if ds else None)
            if self._dispatch is None:
                outcomes = apply_plan(p, self.doc, specs, self._apply_context(now, specs)) if not p.empty else []
                return self._finish(
                    snapshot, ds, p, notes, decisions, desired, last_good, specs, outcomes, now, (clean, busy)
                )
            # A new service's record is made here, in memory, so this pass's scaling decision and
            # status land on it (sync_records); its backend calls go to a worker like any other.
            new = tuple(st for st in p.steps if st.action is Action.CREATE_SERVICE)
            if new:
                apply_plan(Plan(new), self.doc, specs, self._apply_context(now, specs))
            submitted = self._dispatch.submit([st for st in p.steps if st.action is not Action.CREATE_SERVICE], specs)
            if not (wait and submitted):
                outcomes = self._dispatch.take_outcomes()
                return self._finish(
                    snapshot, ds, p, notes, decisions, desired, last_good, specs, outcomes, now, (clean, busy)
                )
        self._dispatch.wait(submitted)  # the lock is free: the workers need it to record their work
        with self.lock:
            outcomes = self._dispatch.take_outcomes()
            # Anything may have changed while the lock was free (workers, stop/start): no skip.
            return self._finish(
                snapshot, ds, p, notes, decisions, desired, last_good, specs, outcomes, now, (clean, busy), True
            )

    def _decide(
        self,
        snapshot: SnapshotLike | None,
        busy_before: set[str],
        listings: Mapping[str, Sequence[ReplicaInfo] | Exception] | None,
    ) -> PassReport | _Decided:
        """Observe, probe, build targets and plan (under the lock); a PassReport when held."""
        now = self.clock()
        doc = self.doc
        busy = busy_before | self.busy()
        ds = self._desired(snapshot)
        hashes, self._in_use, routes_models, routes_probes = self._maps.of(ds)
        notes = observe(
            doc,
            self.backends,
            self._in_use,
            now,
            self._observe,
            hashes,
            mask=self.mask_replica,
            skip=busy,
            listings=listings,
        )
        stats = self._read_stats(now)
        self._in_flight_at = note_in_flight(doc, stats, self._in_flight_at)
        hot = self._hot_now = self._hot(stats, now)
        # Services settled since an earlier pass whose record is as it left them (observed and
        # measured above): no replica to probe for readiness, and those with no liveness re-probe
        # due (`quiet`) are not even looked at (reconciler.engine.settled).
        clean: Mapping[str, Entry] = self._settled.clean(doc, ds, busy) if ds is not None else {}
        # A settled replica's secrets were filled when it settled (its spec's are known since its
        # desired set was resolved, and one spec hash always means the same secrets).
        self._fill_secrets([r for n, r in doc.services.items() if n not in clean] if clean else doc.services.values())
        probe_pending(
            doc, self._prober, now, self._observe, routes_models, routes_probes, self._http_prober,
            mask=self.mask_replica, cadence=self._ready_cadence, hot=hot, skip=clean,
        )
        oldest = self._live_oldest
        # None due at all (the common idle pass): every settled service is quiet, no lookup each.
        fast = now < oldest.soonest and clean.keys() <= oldest.keys()
        quiet = clean.keys() if fast else {n for n in clean if (o := oldest.get(n)) is not None and o[0] + o[1] > now}
        answered = {k: v for st in stats.values() for k, v in st.per_upstream_answered_at.items()}
        recheck_ready(
            doc,
            self._liveness_prober(),
            now,
            self._observe,
            routes_models,
            self._last_probe,
            routes_probes,
            self._http_prober,
            mask=self.mask_replica,
            answered_at=answered,
            skip=quiet,
            oldest=oldest,
        )
        if len(oldest) > len(doc.services):  # services gone since
            for name in [n for n in oldest if n not in doc.services]:
                del oldest[name]
        if not fast:
            oldest.settle()
        # Only a service whose file broke has a last good spec: none without a failed file.
        last_good = self._last_good(ds) if ds is not None and ds.failed else {}
        if len(quiet) < len(clean):  # re-probed: still clean if the probe changed nothing
            clean = {n: e for n, e in clean.items() if n in quiet or fingerprint(doc.services[n]) == e.fp}
        desired, decisions, tnotes = build_targets(
            doc, ds, stats, self._demand, now, self._target_settings, mutate=True, last_good=last_good,
            reuse={n: e.pair for n, e in clean.items()},
        )  # fmt: skip
        notes += tnotes
        p = plan(desired, doc.services, now, skip=clean.keys())
        if busy:
            # Their work runs on a worker: the plan of a half-applied service is planned again
            # once it settles (level-based: skipping loses nothing).
            running = sorted({s.service for s in p.steps} & busy)
            p = replace(p, steps=tuple(s for s in p.steps if s.service not in busy))
            notes += [f"{name}: work in progress; planned again when it settles" for name in running]
        held = self.outputs.hold_reason(self.doc, acting=not p.empty)
        if held is not None:
            return self._held(ds, p, tuple(notes), now, held)
        return ds, p, notes, decisions, desired, last_good, now, clean, busy

    def _apply_context(self, now: float, specs: Mapping[str, DesiredService]) -> ApplyContext:
        ctx = ApplyContext(
            self.backends,
            self.journal,
            now,
            self._fault,
            self.settings.backoff_base,
            self.settings.backoff_max,
            checkpoint=self._checkpoint,
            lock=self.lock,
            at=specs.at if isinstance(specs, Specs) else None,
        )
        ctx.mask = lambda service, text: self.mask_service(service, text, specs.get(service))
        return ctx

    def _apply_service(self, name: str, steps: Sequence[Step], specs: Mapping[str, DesiredService]) -> ServiceOutcome:
        """A worker's job: one service's steps (reconciler.engine.dispatch), timed from now."""
        ctx = self._apply_context(self.clock(), specs)
        outcomes = apply_plan(Plan(tuple(steps)), self.doc, specs, ctx)
        return outcomes[0] if outcomes else ServiceOutcome(name, 0)
