"""The engine's values: its settings, what it is given (snapshots, a desired-set extension) and
what it answers (`PlanResult` for `plan`, `PassReport` for each reconcile pass).

Why a module of its own: the CLI output modules (plan_output, plan_markdown) and the runtime
read these without needing the engine's machinery; `reconciler.engine.reconcile` re-exports them all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from reconciler.config.loader import TreeIndex
from reconciler.engine.apply import ServiceOutcome
from reconciler.engine.desired import DesiredSet
from reconciler.engine.plan import Plan


class DesiredExtension(Protocol):
    """Adds services to production's desired set each pass (pull-request previews:
    `reconciler.previews.loop.PreviewProvider`). `fingerprint()` changes whenever `extend` would
    return something else, so the engine's desired-set cache knows when to rebuild."""

    def extend(self, production: DesiredSet) -> DesiredSet: ...
    def fingerprint(self) -> Any: ...
    def preview_prs(self) -> dict[str, int]: ...


class SnapshotLike(Protocol):
    @property
    def revision(self) -> str: ...
    @property
    def root(self) -> Path: ...
    @property
    def config_path(self) -> str | None: ...


@dataclass(frozen=True)
class Snapshot:
    """A checkout of the config repo at `revision`; configs live under `config_path` in `root`."""

    revision: str
    root: Path
    config_path: str | None = None
    # What `root` holds as its source knows it (reconciler.source.checkout.tree_index): the
    # folder is then not walked, and a file already parsed or hashed is not read again.
    index: TreeIndex | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class EngineSettings:
    domain: str = "localhost"
    allow_empty: bool = False
    env: Mapping[str, str] = field(default_factory=dict, repr=False)  # values for bare KEYs
    default_backend: str = "local"
    # A plan for a pull request (`plan --baseline`): a secret without a value is only a warning.
    missing_env_ok: bool = False
    # Backends a service without `backends:` may go to (settings `default_backends`); empty: all.
    default_backends: tuple[str, ...] = ()
    probe_timeout: float = 2.0
    ready_timeout: float = 600.0  # a python: service builds a venv first; be generous
    backoff_base: float = 2.0
    backoff_max: float = 300.0
    drain_grace: float = 30.0
    # Liveness (reconciler.engine.liveness): READY replicas are re-probed every `recheck_interval` s; the
    # first failure unroutes one, `unhealthy_threshold` failures in a row restart it.
    recheck_interval: float = 10.0
    unhealthy_threshold: int = 3
    drain_min: float = 2.0
    stats_max_age: float = 10.0
    checkpoint_interval: float = 2.0  # during a long apply, write state at least this often
    fault: str | None = None  # TIDEGATE_FAULT point (apply.FAULT_POINTS); env var used when None
    # Services applied at once on a pool of this many worker threads (reconciler.engine.dispatch);
    # 0 applies every step inside the pass, one service after another.
    workers: int = 0


@dataclass(frozen=True)
class PlanResult:
    plan: Plan
    desired: DesiredSet | None
    revision: str | None
    diagnostics: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def has_errors(self) -> bool:
        return self.desired is not None and bool(self.desired.failed or self.desired.blocked)

    @property
    def exit_code(self) -> int:
        """terraform's -detailed-exitcode: 0 nothing to do, 2 changes, 1 errors."""
        if self.has_errors:
            return 1
        return 0 if self.plan.empty else 2


@dataclass(frozen=True)
class PassReport:
    revision: str | None
    plan: Plan
    outcomes: tuple[ServiceOutcome, ...] = ()
    wrote_state: bool = False
    wrote_routes: bool = False
    notes: tuple[str, ...] = ()
    next_run_in: float | None = None  # seconds until something is due (probe, drain, backoff)
    recheck_in: float | None = None  # seconds until a READY replica's liveness re-probe is due

    @property
    def wake_in(self) -> float | None:
        """When the loop should run again: the sooner of `next_run_in` and `recheck_in`.
        (`apply` waits on `next_run_in` only: a re-probe is no reason to keep it waiting.)"""
        due = [t for t in (self.next_run_in, self.recheck_in) if t is not None]
        return min(due) if due else None

    @property
    def errors(self) -> list[str]:
        return [f"{o.service}: {o.error}" for o in self.outcomes if o.error]
