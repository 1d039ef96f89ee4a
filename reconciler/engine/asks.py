"""What the CLI and the control API ask of the engine besides a pass: the desired set and the plan
of a checkout (no side effects), the status rows of `ps`, and `stop`/`start`.

Why a module of its own: these read (or, for stop/start, flip one flag of) the state the pass
owns, under the same lock; keeping them here leaves reconciler.engine.reconcile to the pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

from reconciler.engine import memo
from reconciler.engine.autoscale import ServiceStats
from reconciler.engine.desired import DesiredService, DesiredSet
from reconciler.engine.desired_loader import DesiredLoader
from reconciler.engine.masking import ReplicaMasking
from reconciler.engine.observe import ObserveSettings, observe
from reconciler.engine.plan import plan
from reconciler.engine.stats import read_stats
from reconciler.engine.targets import TargetSettings, build_targets
from reconciler.engine.values import DesiredExtension, EngineSettings, PlanResult, SnapshotLike
from reconciler.state import doc_copy
from reconciler.state.doc_copy import Own, copy_on_write, deep_copy
from reconciler.state.errors import StateError
from reconciler.state.records import ReplicaPhase
from reconciler.state.store import StateStore
from reconciler.state.view import ServiceView, status_views


class EngineAsks(ReplicaMasking):
    """Mixed into the Engine, which sets these attributes (and `_save`, reconciler.engine.finish)."""

    state_dir: Path
    clock: Callable[[], float]
    settings: EngineSettings
    extension: DesiredExtension | None
    read_only: bool
    store: StateStore
    _stats: Callable[[], Mapping[str, ServiceStats]] | None
    _observe: ObserveSettings
    _target_settings: TargetSettings
    _loader: DesiredLoader
    _demand: set[str]
    _scaling_reason: dict[str, str]
    _save: Callable[..., bool]

    def _require_owner(self) -> None:
        if self.read_only:
            raise StateError("this engine was opened read-only")

    # -- desired ---------------------------------------------------------------------------------
    def _desired(self, snapshot: SnapshotLike | None) -> DesiredSet | None:
        running = {n: r.backend for n, r in self.doc.services.items() if r.backend and r.replicas}
        return self._loader.desired(self.doc.last_snapshot, snapshot, self.extension, running)

    def _last_good(self, ds: DesiredSet | None) -> dict[str, DesiredService]:
        return self._loader.last_good(self.doc, ds)

    # -- public API ------------------------------------------------------------------------------
    def desired(self, snapshot: SnapshotLike) -> DesiredSet:
        """The desired set of a checkout (offers chosen, previews added when configured); no state
        is read or written. `tidegate plan --baseline DIR` plans a PR against the base's set."""
        ds = self._desired(snapshot)
        assert ds is not None  # a snapshot was given
        return ds

    def plan(self, snapshot: SnapshotLike | None) -> PlanResult:
        """What `reconcile` would do now. No side effects: works on a copy of the state."""
        now = self.clock()
        with self.lock, memo.gc_paused():  # held throughout: a worker must never see (and write) the scratch copy
            return self._plan_locked(snapshot, now)

    def _plan_locked(self, snapshot: SnapshotLike | None, now: float) -> PlanResult:
        saved = self.doc
        own: Own | None = None
        if doc_copy.COPY_ON_WRITE:  # records copied when observation edits them
            self.doc, own = copy_on_write(saved)
        else:
            self.doc = saved.model_copy(deep=True)
        try:
            ds = self._desired(snapshot)
            observe(
                self.doc,
                self.backends,
                {d.backend for d in (ds.services.values() if ds else [])},
                now,
                self._observe,
                {n: d.spec_hash for n, d in (ds.services.items() if ds else [])},
                mask=self.mask_replica,
                own=own,
            )
            desired, _, notes = build_targets(
                self.doc,
                ds,
                self._read_stats(now),
                self._demand,
                now,
                self._target_settings,
                mutate=False,
                last_good=self._last_good(ds),
            )
            p = plan(desired, self.doc.services, now)
        finally:
            self.doc = saved
        return PlanResult(
            p, ds, ds.revision if ds else None, ds.diagnostics if ds else (), tuple(notes) + p.notes
        )

    def _read_stats(self, now: float) -> Mapping[str, ServiceStats]:
        if self._stats is not None:
            return self._stats()
        return read_stats(self.state_dir, now, self.settings.stats_max_age)

    def stop_service(self, name: str) -> None:
        self._require_owner()
        with self.lock:
            self._set_stopped(name, True)

    def start_service(self, name: str) -> None:
        self._require_owner()
        with self.lock:
            self._set_stopped(name, False)

    def _set_stopped(self, name: str, stopped: bool) -> None:
        rec = self.doc.services.get(name)
        if rec is None:
            raise StateError(f"no service named {name!r} is deployed")
        if stopped:
            rec.stopped, rec.stopped_spec = True, rec.spec_hash
            rec.note(self.clock(), "stopped", "tidegate stop")
        else:
            rec.stopped, rec.stopped_spec = False, None
            rec.note(self.clock(), "started", "tidegate start")
        self._save()

    def status(self, log_lines: int = 5) -> list[ServiceView]:
        """Rows for `tidegate ps`, with the last log lines of failed replicas (best effort)."""
        if self.read_only:
            doc = self.store.load()
        else:
            with self.lock:  # a copy: workers edit the records beside this thread
                doc = deep_copy(self.doc)
        logs: dict[str, tuple[str, ...]] = {}
        for rec in doc.services.values():
            for r in rec.replicas:
                if r.phase is ReplicaPhase.FAILED and r.backend in self.backends:
                    try:
                        lines = self.backends.get(r.backend).logs(r.id, log_lines)
                    except Exception:  # logs are a courtesy; never fail ps over them
                        lines = []
                    logs[r.id] = tuple(self.mask_replica_lines(r, lines))
        views = status_views(doc, logs)
        return [replace(v, scaling_now=self._scaling_reason.get(v.name)) for v in views]
