"""From desired services to planner targets, and back from the applied plan to the records.

Why: between "what the config says" (desired.py) and "what to do" (plan.py) sit decisions that
depend on what the state remembers: how many replicas the autoscaler wants now, whether a service
is stopped, stalled on a permanent error or backing off, whether its file broke (keep its last
good spec: no roll, but failed replicas still restart),
and whether an empty config may prune. After apply, the records take the config-derived fields
(spec hash, route, env names), the scaling decision and a status line. No I/O here.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, MutableMapping
from dataclasses import dataclass

from reconciler.engine import memo
from reconciler.engine.autoscale import ScalingDecision, ServiceStats, desired_replicas
from reconciler.engine.desired import DesiredService, DesiredSet
from reconciler.engine.plan import Desired, Target
from reconciler.state.records import ScalingRecord, ServiceRecord, ServiceStatus, StateDoc
from reconciler.state.view import service_status

log = logging.getLogger("tidegate.engine")


@dataclass(frozen=True)
class TargetSettings:
    allow_empty: bool = False
    drain_grace: float = 30.0
    drain_min: float = 2.0


def decide_count(
    d: DesiredService,
    rec: ServiceRecord | None,
    stats: Mapping[str, ServiceStats],
    now: float,
    demand: bool,
) -> ScalingDecision:
    if d.scaling is None:
        fixed = _FIXED.get(d.min_replicas) if memo.enabled else None
        if fixed is None:
            if len(_FIXED) > 1_000:
                _FIXED.clear()
            fixed = _FIXED[d.min_replicas] = ScalingDecision(d.min_replicas, f"fixed count {d.min_replicas}")
        return fixed
    if rec is None:
        # A new service starts at the minimum of its range (more when traffic already waits), and
        # the first recorded change (0 -> min) says so rather than "steady".
        dec = desired_replicas(d.scaling, stats.get(d.name), d.scaling.min, None, now, demand=demand)
        if dec.count == d.scaling.min and dec.wanted is None:
            return ScalingDecision(
                dec.count, f"new service: start at the minimum of {d.scaling.min}..{d.scaling.max}"
            )
        return dec
    return desired_replicas(
        d.scaling, stats.get(d.name), rec.desired_count, rec.last_scaled_at, now, demand=demand,
        panic_since=rec.panic_since,
    )


# A fixed count's decision by the count: frozen, so one object serves every service of that count
# (a cold plan of 1,000 services made 1,000 equal ones).
_FIXED: dict[int, ScalingDecision] = {}
memo.on_clear(_FIXED.clear)


def config_broken(name: str, rec: ServiceRecord, ds: DesiredSet) -> bool:
    """The file that defines this deployed service failed validation at `ds`'s revision."""
    return name in ds.failed or (name not in ds.services and rec.config_path in set(ds.failed.values()))


def _target(
    d: DesiredService,
    cur: ServiceRecord | None,
    decision: ScalingDecision,
    now: float,
    settings: TargetSettings,
    keep_reason: str = "",
) -> Target:
    """A live target for `d`; held (keep) while stalled or backing off. A non-empty `keep_reason`
    replaces the hold's own reason (a broken file is the reason users must see)."""
    count = 0 if cur is not None and cur.stopped else decision.count
    hold, why = False, keep_reason
    if cur is not None and cur.stalled_spec == d.spec_hash:
        hold, why = True, keep_reason or cur.reason or "stalled on a permanent error"
    elif cur is not None and cur.backoff_until is not None and now < cur.backoff_until:
        hold, why = True, keep_reason or f"backing off for {cur.backoff_until - now:.0f}s: {cur.reason}"
    # `Target(d.name, d.spec_hash, count, keep=hold, ...)` without the frozen dataclass's
    # `__init__` (an `object.__setattr__` per field): the same value at a third of the cost, made
    # for every service of a cold plan (tests/reconciler/test_plan_caches.py compares).
    made = _new(Target)
    made.__dict__.update(
        name=d.name,
        spec_hash=d.spec_hash,
        count=count,
        keep=hold,
        keep_reason=why,
        drain_grace=settings.drain_grace,
        drain_min=settings.drain_min,
        summary=d.summary,
    )
    return made


_new = object.__new__


def build_targets(
    doc: StateDoc,
    ds: DesiredSet | None,
    stats: Mapping[str, ServiceStats],
    demand: set[str],
    now: float,
    settings: TargetSettings,
    mutate: bool,
    last_good: Mapping[str, DesiredService] | None = None,
    reuse: Mapping[str, tuple[Target, ScalingDecision]] | None = None,
) -> tuple[Desired, dict[str, ScalingDecision], list[str]]:
    """Targets for `plan`; with `mutate`, also lifts a stop/stall that a new spec ends.

    `reuse`: services settled since the last pass (reconciler.engine.settled) -> the target and
    decision that pass made for them; taken as they are.

    `last_good`: for services whose file broke, the spec they last ran (same spec hash as the
    record). Such a service gets no spec change, but its replicas are still restarted and its
    count kept (autoscaled by the last good policy); without one it is left exactly as it is."""
    last_good = last_good or {}
    notes: list[str] = []
    if ds is None:
        held = {
            n: Target(n, r.spec_hash, r.desired_count, keep=True, keep_reason="no revision loaded yet")
            for n, r in doc.services.items()
        }
        return Desired(held, prune=False), {}, notes
    targets: dict[str, Target] = {}
    decisions: dict[str, ScalingDecision] = {}
    reuse = reuse or {}
    for name, rec in doc.services.items():
        if name in reuse:
            continue  # in ds.services (the second loop takes it)
        if config_broken(name, rec, ds):
            where = ds.failed.get(name, rec.config_path)
            why = f"{where} has errors; left at revision {rec.revision}"
            lg = last_good.get(name)
            if lg is not None and lg.spec_hash == rec.spec_hash:
                # Kept at its last applied spec, but still healed: restarts, lost replicas.
                decisions[name] = decide_count(lg, rec, stats, now, name in demand)
                targets[name] = _target(lg, rec, decisions[name], now, settings, keep_reason=why)
            else:
                targets[name] = Target(name, rec.spec_hash, rec.desired_count, keep=True, keep_reason=why)
        elif name in ds.blocked:
            targets[name] = Target(
                name, rec.spec_hash, rec.desired_count, keep=True, keep_reason=ds.blocked[name]
            )
    for name, d in ds.services.items():
        known = reuse.get(name)
        if known is not None:
            targets[name], decisions[name] = known
            continue
        cur = doc.services.get(name)
        # A stopped service stays stopped across commits (a README change, an editor's swap file
        # in --watch) until `tidegate start`; a new spec only lifts a permanent-error stall.
        if cur is not None and mutate and cur.stalled_spec and cur.stalled_spec != d.spec_hash:
            cur.stalled_spec = None
        decisions[name] = decide_count(d, cur, stats, now, name in demand)
        targets[name] = _target(d, cur, decisions[name], now, settings)
    prune = True
    if ds.empty and doc.services and not settings.allow_empty:
        prune = False
        notes.append(
            f"the config at revision {ds.revision} has no services; keeping all {len(doc.services)} deployed "
            "service(s). Use --allow-empty to tear them down."
        )
        log.warning(notes[-1])
    return Desired(targets, prune=prune, drain_grace=settings.drain_grace, drain_min=settings.drain_min), decisions, notes


def _record_diagnostics(rec: ServiceRecord, ds: DesiredSet, path: str | None) -> None:
    """Keep the errors of the service's file on its record (for `ps`); log them once, when they
    first appear or change (a new revision with other errors), not on every pass."""
    found = [d.format() for d in ds.problems if path and d.path == path and d.severity == "error"]
    if path and not found:
        found = [f"{path}: the file has errors"]
    if found != rec.diagnostics:
        for line in found:
            log.warning("%s: config error at revision %s: %s", rec.name, str(ds.revision)[:12], line)
        rec.diagnostics = found


def _record_decision(rec: ServiceRecord, d: DesiredService, dec: ScalingDecision, now: float) -> None:
    if (dec.panic_since is None) != (rec.panic_since is None):
        rec.note(now, "panic mode " + ("entered" if dec.panic_since is not None else "ended"), dec.reason)
    if rec.panic_since != dec.panic_since:
        rec.panic_since = dec.panic_since
    if dec.wanted != rec.scaling_wanted:
        # Recorded once per wanted count (the reason's counters change every pass).
        if dec.wanted is not None:
            rec.note(now, "scaling deferred", dec.reason)
        rec.scaling_wanted = dec.wanted
    if dec.count != rec.desired_count:
        if d.scaling is not None:
            rec.record_scaling(
                ScalingRecord(at=now, previous=rec.desired_count, count=dec.count, reason=dec.reason)
            )
            rec.note(now, "scaled", f"{rec.desired_count} -> {dec.count}: {dec.reason}")
        rec.desired_count = dec.count
        rec.last_scaled_at = now


def sync_records(
    doc: StateDoc,
    ds: DesiredSet,
    decisions: Mapping[str, ScalingDecision],
    desired: Desired,
    now: float,
    scaling_reasons: MutableMapping[str, str],
    last_good: Mapping[str, DesiredService] | None = None,
    skip: Collection[str] = (),
) -> None:
    """After apply: carry config-derived fields into each record and set its status and reason.
    A service kept at its `last_good` spec records its scaling decision and stays KEPT. `skip`:
    settled services (reconciler.engine.settled), for which this would change nothing."""
    for name, path in ds.failed.items():
        if name not in doc.services:  # never deployed: a record so `ps` shows why
            doc.services[name] = ServiceRecord(
                name=name,
                spec_hash="",
                config_path=path,
                status=ServiceStatus.BLOCKED,
                reason=f"{path} has errors; not deployed",
            )
    for name, rec in doc.services.items():
        if name in skip:
            continue
        d = ds.services.get(name)
        t = desired.services.get(name)
        if rec.backoff_until is not None and now >= rec.backoff_until:
            rec.backoff_until = None  # expired; `failures` keeps growing the next delay until a success
        if d is None:
            _record_diagnostics(rec, ds, ds.failed.get(name))
            if name in ds.blocked:
                rec.status, rec.reason = ServiceStatus.BLOCKED, ds.blocked[name]
            elif t is not None and not rec.spec_hash:  # broken before it ever ran
                rec.status, rec.reason = ServiceStatus.BLOCKED, f"{ds.failed.get(name)} has errors; not deployed"
            elif t is not None:  # its file broke: kept (and maybe healed at its last good spec)
                lg, dec = (last_good or {}).get(name), decisions.get(name)
                if lg is not None and dec is not None:
                    scaling_reasons[name] = dec.reason
                    _record_decision(rec, lg, dec, now)
                rec.status, rec.reason = ServiceStatus.KEPT, t.keep_reason
            elif ds.empty and not desired.prune:  # an empty commit refused without --allow-empty
                rec.reason = (
                    f"revision {str(ds.revision)[:12]} has no services; kept as it runs "
                    "(`--allow-empty` tears services down)"
                )
            continue
        _record_diagnostics(rec, ds, None)
        if rec.spec_hash and rec.spec_hash != d.spec_hash:
            # The deploy history (and its plan diff) that the control API and dashboard show.
            rec.note(now, "deployed", deploy_detail(ds.revision_of(d), rec.spec_summary, dict(d.summary)))
        # Assigned only when they differ: a pydantic assignment is not free, and a no-op pass
        # over 1,000 records would make 7,000 of them to change nothing.
        revision = ds.revision_of(d)
        if (rec.spec_hash, rec.revision, rec.config_path, rec.backend) != (
            d.spec_hash, revision, d.config_path, d.backend
        ):
            rec.spec_hash, rec.revision, rec.config_path, rec.backend = (
                d.spec_hash,
                revision,
                d.config_path,
                d.backend,
            )
        if rec.env_names != list(d.env_names):
            rec.env_names = list(d.env_names)
        if rec.spec_summary != d.summary:
            rec.spec_summary = dict(d.summary)
        if rec.route is not d.route:
            rec.route = d.route
        if rec.unrouted_at is not None:
            rec.unrouted_at = None  # its config is back while it drained: routed again
        dec = decisions.get(name)
        if dec is not None:
            scaling_reasons[name] = dec.reason
            _record_decision(rec, d, dec, now)
        if rec.stalled_spec == d.spec_hash:
            rec.status = ServiceStatus.STALLED
        elif rec.backoff_until is not None:
            rec.status = ServiceStatus.DEGRADED
        else:
            status, reason = service_status(rec)
            if (rec.status, rec.reason) != (status, reason):
                rec.status, rec.reason = status, reason
    for name, why in ds.blocked.items():
        if name not in doc.services:
            doc.services[name] = ServiceRecord(
                name=name, spec_hash="", status=ServiceStatus.BLOCKED, reason=why
            )


def deploy_detail(revision: str | None, old: Mapping[str, str], new: Mapping[str, str]) -> str:
    """`revision <sha>; <field>: <old> -> <new>; …` for a history entry (fields of the spec summary)."""
    parts = [f"revision {revision or '-'}"]
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            parts.append(f"{key}: {old.get(key, '(none)')} -> {new.get(key, '(none)')}")
    return "; ".join(parts)
