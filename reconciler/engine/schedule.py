"""When the loop should run the next pass: the earliest thing the state says is due.

Why a module of its own: a pure function of the state document and the clock (no I/O), so the
loop wakes early for a provisioning replica, a drain or a backoff without polling fast forever.
"""

from __future__ import annotations

import math
from collections.abc import Collection

from backends.base import ReplicaStatus
from reconciler.state.records import ReplicaPhase, StateDoc


def next_run_in(doc: StateDoc, now: float, drain_min: float, skip: Collection[str] = ()) -> float | None:
    """Seconds until something in `doc` is due (a probe, a drain, a backoff or retry), or None.
    `skip`: settled services (reconciler.engine.settled), which have nothing due."""
    due: list[float] = []
    for name, rec in doc.services.items():
        if name in skip:
            continue
        if rec.backoff_until is not None:
            due.append(rec.backoff_until)
        for r in rec.replicas:
            if r.phase is ReplicaPhase.PROVISIONING:
                due.append(now + (0.5 if r.backend_status == ReplicaStatus.RUNNING else 1.0))
            elif r.phase is ReplicaPhase.DRAINING:
                # Poll while it drains: removal waits for its in-flight requests to finish.
                due.append(max((r.draining_since or now) + drain_min, now + 1.0))
            elif r.phase is ReplicaPhase.FAILED and r.next_attempt_at is not None:
                due.append(r.next_attempt_at)
    # Past-due times belong to services this pass could not act on (kept, blocked): the
    # normal interval covers them; returning them would spin the loop.
    due = [t for t in due if t > now]
    if not due:
        return None
    return max(0.2, min(due) - now) if math.isfinite(min(due)) else None
