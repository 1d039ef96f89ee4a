"""Apply: executes a Plan through the backends, journaling an intent before every side effect.

Why: this is the only place that starts or stops replicas, so it is where crash safety lives.
Each backend call is preceded by a fsynced journal intent and followed by an outcome, and the
state document is edited right after, in memory (the engine checkpoints it). Failures are sorted
at the per-service boundary: `TemporaryError` (and anything unexpected, logged with the service
name) puts that service into exponential backoff; `PermanentError` stalls it until its spec
changes. One bad service never stops the others.

Fault points (`TIDEGATE_FAULT=<point>[:<n>]`, the process SIGKILLs itself the n-th time, default
the first, it reaches the point; used by the crash test):
  after_intent       journal intent written, backend not yet called
  after_create       backend.create returned, outcome not yet journaled
  after_delete       backend.delete returned, outcome not yet journaled
  after_outcome      outcome journaled, state not yet written
  after_state_write  state.json written (engine), routes not yet published
  after_routes       routes.json published (engine)
  open_state_write   state.json written while another worker's backend call is in flight (engine)

`TIDEGATE_FAULT_STALL=<point>:<n>:<seconds>` makes the n-th arrival at a point sleep instead (no
lock held at any point), so a crash case that needs work in flight does not depend on timing.

Concurrency: with the engine's worker pool (reconciler.engine.workqueue) each service's steps run
on a worker, several services at once. Every read or write of the state document and the journal
happens under `ApplyContext.lock` (the engine's lock, shared with the pass and the state writer);
the backend calls themselves run outside it, so a slow create holds only its own service.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from backends.base import BackendRegistry, PermanentError, TemporaryError
from reconciler.engine.desired import At, DesiredService
from reconciler.engine.plan import Action, Plan, Step
from reconciler.state.journal import Journal, Op
from reconciler.state.records import (
    ReplicaPhase,
    ReplicaRecord,
    ServiceRecord,
    ServiceStatus,
    StateDoc,
    offer_fields,
)

log = logging.getLogger("tidegate.apply")

FAULT_POINTS = (
    "after_intent",
    "after_create",
    "after_delete",
    "after_outcome",
    "after_state_write",
    "after_routes",
    "open_state_write",
)


class FaultHook:
    """Kill this process with SIGKILL at a named point (crash testing only)."""

    def __init__(self, spec: str | None, stall: str | None = None) -> None:
        self.point: str | None = None
        self.nth = 1
        self._hits = 0
        self._lock = threading.Lock()  # workers reach points concurrently
        self._stall: tuple[str, int, float] | None = None
        self._stall_hits = 0
        if stall:
            point, n, seconds = [*stall.split(":"), "", ""][:3]
            if point not in FAULT_POINTS:
                raise ValueError(f"unknown stall point {point!r}; known: {', '.join(FAULT_POINTS)}")
            self._stall = (point, int(n or 1), float(seconds or 5))
        if spec:
            point, _, n = spec.partition(":")
            if point not in FAULT_POINTS:
                raise ValueError(f"unknown fault point {point!r}; known: {', '.join(FAULT_POINTS)}")
            self.point = point
            self.nth = int(n) if n else 1

    def __call__(self, point: str) -> None:
        if self._stall is not None and point == self._stall[0]:
            with self._lock:
                self._stall_hits += 1
                stall = self._stall_hits == self._stall[1]
            if stall:
                time.sleep(self._stall[2])
        if point != self.point:
            return
        with self._lock:
            self._hits += 1
            hit = self._hits >= self.nth
        if hit:
            os.kill(os.getpid(), signal.SIGKILL)


def backoff_delay(attempts: int, base: float, cap: float) -> float:
    """Exponential: base, 2*base, 4*base … capped."""
    return float(min(cap, base * (2 ** max(0, attempts - 1))))


@dataclass
class ApplyContext:
    backends: BackendRegistry
    journal: Journal
    now: float
    fault: FaultHook
    backoff_base: float = 2.0
    backoff_max: float = 300.0
    checkpoint: Callable[[], None] = lambda: None  # called after each service's steps
    # (service, text from a backend) -> the text with the values of the secrets that service's
    # replicas received masked (reconciler.state.redact); applied before the text reaches a record,
    # the journal or a log line.
    mask: Callable[[str, str], str] = lambda service, text: text
    # Held for every state/journal access; released around backend calls (see module docstring).
    lock: Any = field(default_factory=threading.RLock)
    # The revision and folder of the set the specs were planned from: a service's files unless it
    # carries its own (`DesiredService.at`).
    at: At | None = None


@dataclass(frozen=True)
class ServiceOutcome:
    service: str
    applied: int
    error: str | None = None
    permanent: bool = False


def _replica_record(d: DesiredService, ordinal: int, ctx: ApplyContext, attempts: int) -> ReplicaRecord:
    spec = d.spec_for(ordinal, ctx.at)
    backend = ctx.backends.get(d.backend)
    with ctx.lock:
        iid = ctx.journal.intent(Op.CREATE, spec.replica_id, d.name, d.backend, ctx.now)
    ctx.fault("after_intent")
    try:
        info = backend.create(spec)
    except Exception as e:
        with ctx.lock:
            ctx.journal.outcome(iid, "error", ctx.now, ctx.mask(d.name, f"{type(e).__name__}: {e}"))
        raise
    ctx.fault("after_create")
    with ctx.lock:
        ctx.journal.outcome(iid, "ok", ctx.now)
    ctx.fault("after_outcome")
    return ReplicaRecord(
        id=spec.replica_id,
        service=d.name,
        spec_hash=d.spec_hash,
        ordinal=ordinal,
        backend=d.backend,
        handle=info.handle,
        address=info.address,
        backend_status=str(info.status),
        created_at=ctx.now,
        started_at=info.started_at or ctx.now,
        attempts=attempts,
        last_error=None,
        secrets=dict(d.secrets),
        machine=info.tags.get("machine"),
        tunnel=info.tunnel,
        **offer_fields(info.offer or spec.offer),
    )


def _delete_replica(rec: ServiceRecord, r: ReplicaRecord, ctx: ApplyContext) -> None:
    backend = ctx.backends.get(r.backend)
    with ctx.lock:
        iid = ctx.journal.intent(Op.DELETE, r.id, rec.name, r.backend, ctx.now)
    ctx.fault("after_intent")
    try:
        backend.delete(r.id)
    except Exception as e:
        with ctx.lock:
            ctx.journal.outcome(iid, "error", ctx.now, ctx.mask(rec.name, f"{type(e).__name__}: {e}"))
        raise
    ctx.fault("after_delete")
    with ctx.lock:
        ctx.journal.outcome(iid, "ok", ctx.now)
        rec.replicas = [x for x in rec.replicas if x.id != r.id]
    ctx.fault("after_outcome")


def _put(rec: ServiceRecord, r: ReplicaRecord) -> None:
    rec.replicas = sorted([x for x in rec.replicas if x.id != r.id] + [r], key=lambda x: (x.ordinal, x.id))


def _apply_step(step: Step, doc: StateDoc, desired: Mapping[str, DesiredService], ctx: ApplyContext) -> None:
    d = desired.get(step.service)
    if step.action is Action.CREATE_SERVICE:
        assert d is not None
        where = d.files_at(ctx.at)
        revision = where.revision if where is not None else None
        rec = ServiceRecord(
            name=d.name,
            spec_hash=d.spec_hash,
            revision=revision,
            config_path=d.config_path,
            backend=d.backend,
            last_scaled_at=ctx.now,
        )
        rec.note(ctx.now, "created", f"revision {revision}")
        with ctx.lock:
            doc.services[d.name] = rec
        return
    with ctx.lock:
        rec = doc.services[step.service]
        if step.action is Action.UNROUTE_SERVICE:
            # No backend call: the state (then the routes) says it; a crash before the routes are
            # published is settled by `recover`, which publishes them from this state.
            rec.unrouted_at = ctx.now
            for r in rec.replicas:
                if r.phase is ReplicaPhase.READY:
                    r.phase, r.draining_since = ReplicaPhase.DRAINING, ctx.now
            rec.reason = "config removed: out of the routes; its replicas stop once their requests finish"
            rec.note(ctx.now, "unrouted", step.reason)
            return
    if step.action is Action.DELETE_SERVICE:
        for r in list(rec.replicas):
            _delete_replica(rec, r, ctx)
        with ctx.lock:
            del doc.services[step.service]
        return
    if step.action in (Action.ADD_REPLICA, Action.REPLACE_REPLICA):
        assert d is not None and step.ordinal is not None
        new = _replica_record(d, step.ordinal, ctx, attempts=0)
        what = f"replacing {step.replaces}" if step.replaces else step.reason
        with ctx.lock:
            _put(rec, new)
            rec.note(ctx.now, "replica started", f"{step.replica} ({what})")
        return
    with ctx.lock:
        replica = rec.replica(step.replica or "")
    if replica is None:
        return  # already gone: nothing to do (level-triggered: the next plan sees the truth)
    if step.action is Action.RESTART_REPLICA:
        assert d is not None
        _delete_replica(rec, replica, ctx)
        new = _replica_record(d, replica.ordinal, ctx, attempts=replica.attempts)
        new.last_error = replica.last_error
        with ctx.lock:
            _put(rec, new)
            rec.note(
                ctx.now,
                "replica restarted",
                f"{replica.id} attempt {replica.attempts + 1}: {replica.last_error or ''}",
            )
    elif step.action is Action.DRAIN_REPLICA:
        with ctx.lock:
            replica.phase = ReplicaPhase.DRAINING
            replica.draining_since = ctx.now
            rec.note(ctx.now, "replica draining", f"{replica.id} ({step.reason})")
    elif step.action is Action.REMOVE_REPLICA:
        _delete_replica(rec, replica, ctx)
        with ctx.lock:
            rec.note(ctx.now, "replica removed", f"{replica.id} ({step.reason})")


def apply_plan(
    plan: Plan, doc: StateDoc, desired: Mapping[str, DesiredService], ctx: ApplyContext
) -> list[ServiceOutcome]:
    """Run every step, service by service; errors stay inside their service."""
    outcomes: list[ServiceOutcome] = []
    by_service: dict[str, list[Step]] = {}
    for s in plan.steps:
        by_service.setdefault(s.service, []).append(s)
    for name, steps in by_service.items():
        done = 0
        try:
            for step in steps:
                _apply_step(step, doc, desired, ctx)
                done += 1
            with ctx.lock:
                if name in doc.services:
                    doc.services[name].failures = 0
                    doc.services[name].backoff_until = None
            outcomes.append(ServiceOutcome(name, done))
        except PermanentError as e:
            msg = ctx.mask(name, str(e))
            with ctx.lock:
                rec = doc.services.get(name)
                if rec is not None:
                    d = desired.get(name)
                    rec.stalled_spec = d.spec_hash if d else rec.spec_hash
                    rec.status = ServiceStatus.STALLED
                    rec.reason = f"stalled until the config changes: {msg}"
                    rec.note(ctx.now, "stalled", msg)
            log.error("service %s: permanent error: %s", name, msg)
            outcomes.append(ServiceOutcome(name, done, msg, permanent=True))
        except Exception as e:  # the per-service boundary: log it, back off, carry on with the others
            msg = ctx.mask(name, f"{type(e).__name__}: {e}")
            if isinstance(e, TemporaryError):
                log.warning("service %s: temporary error: %s", name, msg)
            else:
                trace = "".join(traceback.format_exception(e))
                log.error("service %s: unexpected error while applying:\n%s", name, ctx.mask(name, trace))
            with ctx.lock:
                rec = doc.services.get(name)
                if rec is not None:
                    rec.failures += 1
                    delay = backoff_delay(rec.failures, ctx.backoff_base, ctx.backoff_max)
                    if isinstance(e, TemporaryError) and e.delay:
                        delay = max(delay, e.delay)
                    rec.backoff_until = ctx.now + delay
                    rec.reason = f"retrying in {delay:.0f}s: {msg}"
                    rec.note(ctx.now, "error", msg)
            outcomes.append(ServiceOutcome(name, done, msg))
        ctx.checkpoint()
    return outcomes
