"""Observe: make the state document agree with what the backends really have, and probe readiness.

Why separate from the plan: this is the I/O half of "actual state". Every pass asks each backend in
use for `list_owned()` (one call per backend, not one per replica) and folds the answer into the
records: a replica that exited or vanished becomes FAILED (restarted later with backoff), a
draining one that vanished is simply dropped, and a replica the backend has but the state does not
know (a crash between create and the state write) is adopted, never started twice. Then every
PROVISIONING replica that runs is probed when due (its own cadence: fast while requests are held
for its service), all at once on a bounded pool; past `ready_timeout` it counts as failed.

`settle_journal` is the start-up half: every journal intent newer than the state is settled by
asking the backend about that replica id.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from functools import partial

from backends.base import BackendRegistry, ReplicaInfo, ReplicaStatus
from reconciler.config.models import ProbeSpec
from reconciler.engine.apply import backoff_delay
from reconciler.engine.naming import dns_safe, parse_replica_id
from reconciler.engine.probe import HttpProber, ProbeResult, fan_out, guarded, probe_http, run_probes
from reconciler.state.doc_copy import Own
from reconciler.state.journal import Journal, Op
from reconciler.state.records import ReplicaPhase, ReplicaRecord, ServiceRecord, StateDoc, offer_fields
from tidegate.routes import ModelRoute

log = logging.getLogger("tidegate.observe")

Prober = Callable[[str, ModelRoute | None, float], ProbeResult]
# (replica, text from outside: backend message, probe error) -> the text with the values of the
# secrets that replica received masked (reconciler.state.redact.SecretBook via the engine).
ReplicaMask = Callable[[ReplicaRecord, str], str]


def no_mask(r: ReplicaRecord, text: str) -> str:
    return text


@dataclass(frozen=True)
class ObserveSettings:
    probe_timeout: float = 2.0
    ready_timeout: float = 600.0
    backoff_base: float = 2.0
    backoff_max: float = 300.0
    recheck_interval: float = 10.0  # READY replicas are re-probed this often (reconciler.engine.liveness)
    unhealthy_threshold: int = 3  # failed re-probes in a row before a READY replica is failed


def mark_failed(r: ReplicaRecord, message: str, now: float, s: ObserveSettings) -> None:
    r.phase = ReplicaPhase.FAILED
    r.attempts += 1
    r.last_error = message[:300]
    r.next_attempt_at = now + backoff_delay(r.attempts, s.backoff_base, s.backoff_max)
    r.ready_at = None
    r.probe_failures = 0


def _service_for(doc: StateDoc, info: ReplicaInfo, hint: str | None) -> str | None:
    if info.service:
        return info.service
    if hint:
        return hint
    parsed = parse_replica_id(info.replica_id)
    if parsed is None:
        return None
    for name in doc.services:
        if dns_safe(name)[: len(parsed.service_part)] == parsed.service_part:
            return name
    return parsed.service_part


def adopt(
    doc: StateDoc,
    info: ReplicaInfo,
    now: float,
    desired_hashes: Mapping[str, str],
    hint: str | None = None,
    own: Own | None = None,
) -> ReplicaRecord | None:
    """Record a replica the backend has and the state lacks. The plan then keeps or removes it.
    `own`: see `observe`."""
    parsed = parse_replica_id(info.replica_id)
    service = _service_for(doc, info, hint)
    if service is None or parsed is None:
        log.warning(
            "backend %s owns %s, which is not a tidegate replica id: left alone",
            info.backend,
            info.replica_id,
        )
        return None
    spec_hash = info.spec_hash or ""
    if not spec_hash:
        for h in (
            desired_hashes.get(service),
            doc.services[service].spec_hash if service in doc.services else None,
        ):
            if h and h[:8] == parsed.spec_hash8:
                spec_hash = h
        spec_hash = spec_hash or parsed.spec_hash8
    rec = doc.services.get(service)
    if rec is None:
        rec = ServiceRecord(name=service, spec_hash=spec_hash, backend=info.backend)
        doc.services[service] = rec
    elif own is not None:
        rec = own(rec)
    r = ReplicaRecord(
        id=info.replica_id,
        service=service,
        spec_hash=spec_hash,
        ordinal=parsed.ordinal,
        backend=info.backend,
        handle=info.handle,
        address=info.address,
        backend_status=str(info.status),
        created_at=info.started_at or now,
        started_at=info.started_at or now,
        machine=info.tags.get("machine"),
        tunnel=info.tunnel,
        **offer_fields(info.offer),
    )
    rec.replicas = sorted([x for x in rec.replicas if x.id != r.id] + [r], key=lambda x: (x.ordinal, x.id))
    rec.note(now, "replica adopted", f"{r.id} found on backend {info.backend}")
    return r


def observe(
    doc: StateDoc,
    backends: BackendRegistry,
    in_use: set[str],
    now: float,
    s: ObserveSettings,
    desired_hashes: Mapping[str, str],
    mask: ReplicaMask = no_mask,
    skip: frozenset[str] | set[str] = frozenset(),
    listings: Mapping[str, Sequence[ReplicaInfo] | Exception] | None = None,
    own: Own | None = None,
) -> list[str]:
    """Fold every in-use backend's `list_owned()` into `doc`. Returns problems to report.
    Backend messages are masked with `mask` before they are recorded. Services in `skip` have
    work running on a worker (reconciler.engine.dispatch): their records and the replicas the
    backend lists for them are left alone until it settles (a replica mid-create is not an
    orphan to adopt, one mid-delete is not a failure). `listings` (backend -> its `list_owned()`
    or the error it raised, from `list_backends`) lets the caller ask the backends without
    holding the engine's lock; backends missing from it are asked here. `own` (a scratch
    document's, see reconciler.state.doc_copy.copy_on_write) is called with a record before it
    or one of its replicas is edited; the record it returns (same replicas, same order) is
    edited instead."""
    problems: list[str] = []
    names = in_use | {r.backend for rec in doc.services.values() for r in rec.replicas}
    for bname in sorted(names):
        if bname not in backends:
            problems.append(f"backend {bname} is not configured; its replicas are left as recorded")
            continue
        got = listings[bname] if listings is not None and bname in listings else _list(backends, bname)
        if isinstance(got, Exception):  # one unreachable backend must not stop the pass
            problems.append(f"backend {bname}: list_owned failed: {type(got).__name__}: {got}")
            continue
        infos = {i.replica_id: i for i in got}
        take = infos.pop
        for rec in list(doc.services.values()) if own is not None else doc.services.values():
            held = rec.name in skip
            drained: list[ReplicaRecord] = []
            for i, r in enumerate(rec.replicas):  # `rec.replicas` as it was when the loop began
                if r.backend != bname:
                    continue
                info = take(r.id, None)
                if held:
                    continue
                status = info.status if info is not None else ReplicaStatus.GONE
                if status is ReplicaStatus.GONE:
                    if r.phase is ReplicaPhase.DRAINING:
                        rec, r = _owned(own, rec, i)
                        drained.append(r)
                    elif r.phase is not ReplicaPhase.FAILED:
                        rec, r = _owned(own, rec, i)
                        mark_failed(r, "replica is gone from the backend", now, s)
                        rec.note(now, "replica failed", f"{r.id}: gone")
                    continue
                assert info is not None
                # Each field assigned only when it differs (an assignment is a record edit).
                address = info.address
                exited = status is ReplicaStatus.EXITED and r.phase in (ReplicaPhase.PROVISIONING, ReplicaPhase.READY)
                if own is not None and (
                    r.backend_status != status
                    or (address and (address != r.address or info.tunnel != r.tunnel))
                    or (info.handle and info.handle != r.handle)
                    or exited
                ):
                    rec, r = _owned(own, rec, i)
                if r.backend_status != status:
                    r.backend_status = str(status)
                if address and address != r.address:
                    r.address = address
                if address and info.tunnel != r.tunnel:
                    r.tunnel = info.tunnel
                if info.handle and info.handle != r.handle:
                    r.handle = info.handle
                if exited:
                    message = mask(r, info.message) if info.message else "exited"
                    mark_failed(r, message, now, s)
                    rec.note(now, "replica failed", f"{r.id}: {message}")
            for r in drained:
                rec.replicas.remove(r)
        for info in infos.values():
            if info.status in (ReplicaStatus.GONE, ReplicaStatus.TERMINATING):
                continue  # on its way out (a delete we already made): nothing to adopt
            if skip and _service_for(doc, info, None) in skip:
                continue  # created by a worker that has not recorded it yet
            adopt(doc, info, now, desired_hashes, own=own)
    return problems


def _owned(own: Own | None, rec: ServiceRecord, i: int) -> tuple[ServiceRecord, ReplicaRecord]:
    """The record to edit and its replica `i` (the record itself without `own`)."""
    if own is None:
        return rec, rec.replicas[i]
    rec = own(rec)
    return rec, rec.replicas[i]


# Readiness cadence, per replica (in memory): a replica of a service with requests held at zero
# is probed every READY_FAST s for its first FAST_FOR s, then backing off by BACKOFF to READY_SLOW;
# any other starting replica every READY_SLOW s. The pass asks to run again when the next is due.
READY_FAST = 0.1
READY_SLOW = 0.5
FAST_FOR = 10.0
BACKOFF = 1.5


def _next_step(step: float | None, hot: bool, age: float) -> float:
    if not hot:
        return READY_SLOW
    if age < FAST_FOR or step is None:
        return READY_FAST
    return min(READY_SLOW, step * BACKOFF)


def _list(backends: BackendRegistry, name: str) -> Sequence[ReplicaInfo] | Exception:
    try:
        return list(backends.get(name).list_owned())
    except Exception as e:  # reported by `observe` as a problem of this pass
        return e


def list_backends(backends: BackendRegistry, names: set[str]) -> dict[str, Sequence[ReplicaInfo] | Exception]:
    """Every configured backend in `names` asked for `list_owned()` (I/O, no state touched)."""
    return {n: _list(backends, n) for n in sorted(names) if n in backends}


def probe_pending(
    doc: StateDoc,
    prober: Prober,
    now: float,
    s: ObserveSettings,
    routes: Mapping[str, ModelRoute | None],
    probes: Mapping[str, Sequence[ProbeSpec]] | None = None,
    http_prober: HttpProber = probe_http,
    mask: ReplicaMask = no_mask,
    cadence: MutableMapping[str, tuple[float, float]] | None = None,
    hot: Collection[str] = (),
    skip: Collection[str] = (),
) -> None:
    """Probe every PROVISIONING replica that runs and is due; promote to READY or fail it past the
    timeout. The probes of one pass run at once (`fan_out`), each bounded by its deadline.
    `cadence` (replica id -> (next due, step)) paces each replica; `hot`: services with requests
    held, probed every READY_FAST s. A service with dstack `probes` (`probes`: service -> its
    probes) is ready after `ready_after` rounds of passing probes in a row, a round at most every
    `interval`. `skip`: services known to have no PROVISIONING replica (reconciler.engine.settled)."""
    pace: MutableMapping[str, tuple[float, float]] = {} if cadence is None else cadence
    jobs: list[tuple[ServiceRecord, ReplicaRecord, Callable[[], ProbeResult | None]]] = []
    waiting: list[tuple[ServiceRecord, ReplicaRecord, str]] = []
    starting: set[str] = set()
    for rec in doc.services.values():
        if rec.name in skip:
            continue
        own = (probes or {}).get(rec.name, rec.route.probes if rec.route else ())
        for r in rec.replicas:
            if r.phase is not ReplicaPhase.PROVISIONING:
                continue
            starting.add(r.id)
            if not (r.backend_status == ReplicaStatus.RUNNING and r.address):
                waiting.append((rec, r, f"backend status {r.backend_status}"))
                continue
            if own:
                if r.probed_at is not None and now - r.probed_at < min(p.interval for p in own):
                    waiting.append((rec, r, r.last_error or "waiting for the probe interval"))
                    continue
                r.probed_at = now
                jobs.append((rec, r, partial(run_probes, r.address, own, http_prober)))
                continue
            due, step = pace.get(r.id, (now, 0.0))
            if now < due:
                waiting.append((rec, r, r.last_error or "waiting for the next probe"))
                continue
            age = now - (r.started_at or r.created_at or now)
            nxt = _next_step(step or None, rec.name in hot, age)
            pace[r.id] = (now + nxt, nxt)
            model = routes.get(rec.name, rec.route.model if rec.route else None)
            jobs.append((rec, r, partial(guarded, partial(prober, r.address, model, s.probe_timeout))))
    for rid in [k for k in pace if k not in starting]:
        del pace[rid]  # ready, failed or gone: a later start begins afresh
    results = fan_out([job for _, _, job in jobs])
    for (rec, r, _), res in zip(jobs, results, strict=True):
        own = (probes or {}).get(rec.name, rec.route.probes if rec.route else ())
        if own:
            assert res is not None
            res = _fold_round(rec, r, own, now, res)
        assert res is not None
        if res.ready:
            r.phase = ReplicaPhase.READY
            r.ready_at = now
            r.attempts = 0
            r.last_error = None
            r.next_attempt_at = None
            r.probe_passes = 0
            pace.pop(r.id, None)
            rec.note(now, "replica ready", f"{r.id} ({mask(r, res.detail)})")
            continue
        waiting.append((rec, r, mask(r, res.detail)))
    for rec, r, detail in waiting:
        started = r.started_at or r.created_at or now
        if now - started > s.ready_timeout:
            mark_failed(r, f"not ready after {s.ready_timeout:g}s: {detail}", now, s)
            rec.note(now, "replica failed", f"{r.id}: not ready after {s.ready_timeout:g}s")


def readiness_due_in(doc: StateDoc, cadence: Mapping[str, tuple[float, float]], hot: Collection[str], now: float) -> float | None:
    """Seconds until a starting replica of a `hot` service (requests held) is due for its next
    readiness probe, or None: the others are paced by reconciler.engine.schedule."""
    due = [
        cadence.get(r.id, (now, 0.0))[0]
        for name in hot
        if (rec := doc.services.get(name)) is not None
        for r in rec.replicas
        if r.phase is ReplicaPhase.PROVISIONING
    ]
    return max(0.02, min(due) - now) if due else None


def _fold_round(
    rec: ServiceRecord, r: ReplicaRecord, probes: Sequence[ProbeSpec], now: float, res: ProbeResult
) -> ProbeResult:
    """Count one round of a replica's dstack probes; ready once `ready_after` rounds passed in a row."""
    needed = max(p.ready_after for p in probes)
    if not res.ready:
        if r.probe_passes or r.last_error != f"probe failed: {res.detail}"[:300]:
            rec.note(now, "probe failed", f"{r.id}: {res.detail}")
        r.probe_passes = 0
        r.last_error = f"probe failed: {res.detail}"[:300]
        return res
    r.probe_passes += 1
    r.last_error = None
    if r.probe_passes < needed:
        return ProbeResult(False, f"probes passed {r.probe_passes}/{needed}")
    return ProbeResult(True, f"probes passed {r.probe_passes}/{needed}: {res.detail}")


def settle_journal(doc: StateDoc, journal: Journal, backends: BackendRegistry, now: float) -> list[str]:
    """Settle every intent newer than the state by asking the backend. Returns what was done."""
    done: list[str] = []
    last: dict[str, tuple[Op, str, str, str | None]] = {}
    for it in journal.intents_after(doc.journal_seq):
        last[it.replica] = (it.op, it.backend, it.service, it.intent_id if it.outcome is None else None)
    for rid, (op, bname, service, open_id) in last.items():
        if bname not in backends:
            done.append(f"{rid}: backend {bname} not configured; intent left open")
            continue
        backend = backends.get(bname)
        info = backend.describe(rid)
        exists = info is not None and info.status is not ReplicaStatus.GONE
        holder = next((rec for rec in doc.services.values() if rec.replica(rid) is not None), None)
        if op is Op.CREATE:
            if exists and holder is None:
                assert info is not None
                adopt(doc, info, now, {}, hint=service)
                done.append(f"{rid}: created before the crash; adopted")
            elif not exists and holder is not None:
                holder.replicas = [r for r in holder.replicas if r.id != rid]
                done.append(f"{rid}: never started; forgotten")
        else:
            if exists:
                iid = journal.intent(Op.DELETE, rid, service, bname, now)
                backend.delete(rid)
                journal.outcome(iid, "ok", now)
                done.append(f"{rid}: delete interrupted by the crash; finished")
            if holder is not None:
                holder.replicas = [r for r in holder.replicas if r.id != rid]
        if open_id is not None:
            journal.outcome(open_id, "settled", now, "exists" if exists else "gone")
    doc.journal_seq = journal.seq
    return done
