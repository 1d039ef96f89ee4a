"""Liveness: re-probe READY replicas so one whose process lives but no longer answers is unrouted.

Why: the backend's status only says the process (or instance) is alive. A replica that hangs —
HTTP accepted but never answered, a deadlocked worker — would otherwise stay routed forever.
Every `recheck_interval` seconds each READY replica gets the same probe as readiness
(`reconciler.engine.probe`), the way Kubernetes runs its readiness and liveness probes on a period:

- the first failure takes it out of the routes (`probe_failures > 0`; `view.build_routes` skips
  it), so traffic only goes to replicas that answer; a later passing probe puts it back;
- a service with dstack `probes:` is re-probed with those, every (smallest) `interval`;
- `unhealthy_threshold` failures in a row fail it (`observe.mark_failed`): the plan then restarts
  it with backoff, exactly like a replica that exited.

The I/O (the probe) stays here at the edge; plan() only sees the records. The time of the last
probe lives in memory (the caller's dict), not in the state document, so a healthy replica's
re-probe never writes state: only a change of `probe_failures` / `last_error` does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping, Sequence

from backends.base import ReplicaStatus
from reconciler.config.models import ProbeSpec
from reconciler.engine.observe import ObserveSettings, Prober, ReplicaMask, mark_failed, no_mask
from reconciler.engine.probe import HttpProber, probe_http, run_probes
from reconciler.state.records import ReplicaPhase, ReplicaRecord, StateDoc
from tidegate.routes import ModelRoute


def _checkable(r: ReplicaRecord) -> bool:
    return r.phase is ReplicaPhase.READY and r.backend_status == ReplicaStatus.RUNNING and bool(r.address)


def _last_probe(r: ReplicaRecord, last_probe: Mapping[str, float]) -> float:
    # Not probed by this process yet: its readiness probe is the last one known, so a replica
    # promoted this pass waits an interval, and after a restart of tidegate every replica that
    # became ready longer than an interval ago is probed on the first pass.
    return last_probe.get(r.id, r.ready_at if r.ready_at is not None else -math.inf)


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
) -> list[str]:
    """Probe every READY replica whose last probe is `recheck_interval` old (a service with dstack
    `probes`: their smallest `interval`, and those probes). Returns the ids probed."""
    probed: list[str] = []
    live: set[str] = set()
    for rec in doc.services.values():
        own = (probes or {}).get(rec.name, rec.route.probes if rec.route else ())
        interval = min(p.interval for p in own) if own else s.recheck_interval
        for r in rec.replicas:
            if not _checkable(r):
                continue
            live.add(r.id)
            if now - _last_probe(r, last_probe) < interval:
                continue
            model = routes.get(rec.name, rec.route.model if rec.route else None)
            if own:
                assert r.address is not None
                outcome = run_probes(r.address, own, http_prober)
                res = (outcome.ready, mask(r, outcome.detail))
            else:
                ok, detail = _probe(prober, r, model, s)
                res = (ok, mask(r, detail))
            last_probe[r.id] = now
            probed.append(r.id)
            if res[0]:
                if r.probe_failures:
                    rec.note(now, "replica answering again", f"{r.id} back in the routes ({res[1]})")
                    r.probe_failures = 0
                    r.last_error = None
                continue
            r.probe_failures += 1
            reason = f"liveness probe failed ({r.probe_failures}/{s.unhealthy_threshold}): {res[1]}"
            if r.probe_failures >= s.unhealthy_threshold:
                n = r.probe_failures
                r.probe_failures = 0
                mark_failed(r, f"not answering: {n} probes failed in a row: {res[1]}", now, s)
                rec.note(now, "replica failed", f"{r.id}: not answering after {n} probes ({res[1]})")
                continue
            r.last_error = reason[:300]
            if r.probe_failures == 1:
                rec.note(now, "replica not answering", f"{r.id} out of the routes: {res[1]}")
    for rid in [k for k in last_probe if k not in live]:
        del last_probe[rid]  # gone, failed or draining: its next READY life starts afresh
    return probed


def _probe(
    prober: Prober, r: ReplicaRecord, model: ModelRoute | None, s: ObserveSettings
) -> tuple[bool, str]:
    assert r.address is not None
    try:
        res = prober(r.address, model, s.probe_timeout)
    except Exception as e:  # a prober must never stop the pass; count it as a failed probe
        return False, f"{type(e).__name__}: {e}"[:200]
    return res.ready, res.detail


def recheck_in(doc: StateDoc, now: float, interval: float, last_probe: Mapping[str, float]) -> float | None:
    """Seconds until the next READY replica's re-probe is due (None: no READY replica to check)."""
    due = [
        _last_probe(r, last_probe) + interval
        for rec in doc.services.values()
        for r in rec.replicas
        if _checkable(r)
    ]
    if not due:
        return None
    return max(0.2, min(due) - now)
