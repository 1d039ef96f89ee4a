"""Liveness: re-probe READY replicas so one whose process lives but no longer answers is unrouted.

Why: the backend's status only says the process (or instance) is alive. A replica that hangs —
HTTP accepted but never answered, a deadlocked worker — would otherwise stay routed forever.
Every `recheck_interval` seconds each READY replica gets a liveness probe, the way Kubernetes runs
its liveness probes on a period:

- the probe is cheap: the service's own dstack `probes:` when it has them (every smallest
  `interval`), else `GET /` on its port (`probe.probe_alive`) — never a generation, which a model
  server saturated by real traffic answers late exactly when the load peaks;
- its deadline scales with load: `probe_timeout` plus `LOAD_SLACK` s per request the gateway has
  in flight on that replica, up to `MAX_TIMEOUT`;
- a replica the gateway saw answering a proxied request within the interval (`answered_at`, from
  the gateway's stats file) is alive: it is not probed and any failures are forgiven;
- the first failure takes it out of the routes (`probe_failures > 0`; `view.build_routes` skips
  it), so traffic only goes to replicas that answer; a later passing probe puts it back;
- `unhealthy_threshold` failures in a row fail it (`observe.mark_failed`): the plan then restarts
  it with backoff, exactly like a replica that exited.

Probes of one pass run at once on a bounded pool (`probe.fan_out`), each under a hard deadline.
The I/O (the probe) stays here at the edge; plan() only sees the records. The time of the last
probe lives in memory (the caller's dict), not in the state document, so a healthy replica's
re-probe never writes state: only a change of `probe_failures` / `last_error` does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, MutableMapping, Sequence
from functools import partial

from backends.base import ReplicaStatus
from reconciler.config.models import ProbeSpec
from reconciler.engine.observe import ObserveSettings, Prober, ReplicaMask, mark_failed, no_mask
from reconciler.engine.probe import HttpProber, ProbeResult, fan_out, guarded, probe_http, run_probes
from reconciler.state.records import ReplicaPhase, ReplicaRecord, ServiceRecord, StateDoc
from tidegate.routes import ModelRoute


def _checkable(r: ReplicaRecord) -> bool:
    return r.phase is ReplicaPhase.READY and r.backend_status == ReplicaStatus.RUNNING and bool(r.address)


def _last_probe(r: ReplicaRecord, last_probe: Mapping[str, float]) -> float:
    # Not probed by this process yet: its readiness probe is the last one known, so a replica
    # promoted this pass waits an interval, and after a restart of tidegate every replica that
    # became ready longer than an interval ago is probed on the first pass.
    return last_probe.get(r.id, r.ready_at if r.ready_at is not None else -math.inf)


LOAD_SLACK = 0.5  # s of probe deadline per request in flight on the replica
MAX_TIMEOUT = 30.0


def live_timeout(base: float, in_flight: int) -> float:
    """The liveness deadline of a replica with `in_flight` proxied requests: longer under load."""
    return min(MAX_TIMEOUT, max(base, base + LOAD_SLACK * max(0, in_flight)))


class LiveDue(dict[str, tuple[float, float]]):
    """Per service: its READY replicas' oldest liveness probe and their interval (inf: none to
    probe). `soonest` is never later than the earliest `first + interval` of the entries (entries
    are written through `note`, which keeps it so; `settle` makes it exact again)."""

    soonest: float = math.inf

    def note(self, name: str, first: float, interval: float) -> None:
        self[name] = (first, interval)
        self.soonest = min(self.soonest, first + interval)

    def settle(self) -> None:
        self.soonest = min((first + interval for first, interval in self.values()), default=math.inf)


def recheck_ready(
    doc: StateDoc,
    prober: Prober,
    now: float,
    s: ObserveSettings,
    routes: Mapping[str, ModelRoute | None],
    last_probe: MutableMapping[str, float],
    probes: Mapping[str, Sequence[ProbeSpec]] | None = None,
    http_prober: HttpProber = probe_http,
    mask: ReplicaMask = no_mask,
    answered_at: Mapping[str, float] | None = None,
    skip: Collection[str] = (),
    oldest: LiveDue | None = None,
) -> list[str]:
    """Probe every READY replica whose last probe is `recheck_interval` old (a service with dstack
    `probes`: their smallest `interval`, and those probes), all at once. `answered_at`: replica id
    -> when the gateway last had an answer from it (same clock as `now`). Returns the ids probed.

    `oldest` (service -> (its READY replicas' oldest last probe, its interval), inf when none) is
    filled for every service looked at; `skip`: services the caller knows have none due (their
    `oldest` entry, unchanged records: reconciler.engine.settled), left out."""
    live: set[str] = set()
    answered = answered_at or {}
    jobs: list[tuple[ServiceRecord, ReplicaRecord, Callable[[], ProbeResult]]] = []
    skipped: list[ServiceRecord] = []
    for rec in doc.services.values():
        if rec.name in skip:
            skipped.append(rec)
            continue
        own = (probes or {}).get(rec.name, rec.route.probes if rec.route else ())
        interval = min(p.interval for p in own) if own else s.recheck_interval
        first = math.inf
        for r in rec.replicas:
            if not _checkable(r):
                continue
            live.add(r.id)
            last = _last_probe(r, last_probe)
            if now - last < interval:
                first = min(first, last)
                continue
            last_probe[r.id] = now
            first = min(first, now)
            if now - answered.get(r.id, -math.inf) < interval:
                _passed(rec, r, now, "answering proxied requests")
                continue
            assert r.address is not None
            timeout = live_timeout(s.probe_timeout, r.in_flight)
            if own:
                scaled = [p.model_copy(update={"timeout": live_timeout(p.timeout, r.in_flight)}) for p in own]
                jobs.append((rec, r, partial(run_probes, r.address, scaled, http_prober)))
            else:
                model = routes.get(rec.name, rec.route.model if rec.route else None)
                jobs.append((rec, r, partial(guarded, partial(prober, r.address, model, timeout))))
        if oldest is not None:
            oldest.note(rec.name, first, interval)
    results = fan_out([job for _, _, job in jobs])
    for (rec, r, _), res in zip(jobs, results, strict=True):
        detail = mask(r, res.detail)
        if res.ready or now - answered.get(r.id, -math.inf) < s.recheck_interval:
            _passed(rec, r, now, detail)
            continue
        r.probe_failures += 1
        reason = f"liveness probe failed ({r.probe_failures}/{s.unhealthy_threshold}): {detail}"
        if r.probe_failures >= s.unhealthy_threshold:
            n = r.probe_failures
            r.probe_failures = 0
            mark_failed(r, f"not answering: {n} probes failed in a row: {detail}", now, s)
            rec.note(now, "replica failed", f"{r.id}: not answering after {n} probes ({detail})")
            continue
        r.last_error = reason[:300]
        if r.probe_failures == 1:
            rec.note(now, "replica not answering", f"{r.id} out of the routes: {detail}")
    if last_probe and skipped:
        live.update(r.id for rec in skipped for r in rec.replicas)  # as they were: kept
    for rid in [k for k in last_probe if k not in live]:
        del last_probe[rid]  # gone, failed or draining: its next READY life starts afresh
    return [r.id for _, r, _ in jobs]


def _passed(rec: ServiceRecord, r: ReplicaRecord, now: float, detail: str) -> None:
    if r.probe_failures:
        rec.note(now, "replica answering again", f"{r.id} back in the routes ({detail})")
        r.probe_failures = 0
        r.last_error = None


def recheck_in(
    doc: StateDoc,
    now: float,
    interval: float,
    last_probe: Mapping[str, float],
    skip: Collection[str] = (),
    oldest: Mapping[str, tuple[float, float]] | None = None,
) -> float | None:
    """Seconds until the next READY replica's re-probe is due (None: no READY replica to check).
    `skip`: services whose `oldest` entry (from `recheck_ready`) still holds."""
    known = oldest or {}
    due = [
        _last_probe(r, last_probe) + interval
        for rec in doc.services.values()
        if rec.name not in skip or rec.name not in known
        for r in rec.replicas
        if _checkable(r)
    ]
    first = min((known[n][0] for n in skip if n in known), default=math.inf)
    if first < math.inf:
        due.append(first + interval)
    if not due:
        return None
    return max(0.2, min(due) - now)
