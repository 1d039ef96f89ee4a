"""The plan: `plan(desired, actual, now) -> Plan`, a pure function over values.

Why pure: this is where every decision about replicas is made (create, roll, restart with
backoff, drain, remove), and it must be table-tested and deterministic: no I/O, no clock (`now` is
passed in), no randomness. The engine observes, calls `plan`, and `apply` executes the steps.

Rules (DESIGN.md, reliability): updates roll with at most one surge replica per service: a new
replica starts, and an outdated one is drained only once enough new ones are READY. A FAILED
replica is restarted when its backoff time has passed. Scale-down drains the least useful replica
(not ready, then outdated, then fewest in-flight). A `keep` target (blocked, stalled, backing off,
or a broken config with no last good spec known) is left exactly as it is. Services missing from the desired set are deleted only when `prune` is true.

Rendering lives elsewhere: `reconciler.render.plan_output` (text, JSON) and `reconciler.render.plan_markdown`
(the PR comment).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from reconciler.engine.naming import replica_id
from reconciler.state.records import ReplicaPhase, ReplicaRecord, ServiceRecord


class Action(StrEnum):
    CREATE_SERVICE = "create_service"
    ADD_REPLICA = "add_replica"
    REPLACE_REPLICA = "replace_replica"  # start a new-spec replica that will retire `replaces`
    RESTART_REPLICA = "restart_replica"  # a FAILED replica whose backoff expired
    DRAIN_REPLICA = "drain_replica"  # out of the routes; removed after the drain grace
    REMOVE_REPLICA = "remove_replica"
    # A removed service leaves the routes first (new requests get 404) and its replicas drain;
    # DELETE_SERVICE stops them once drained (no request cut: it would get a 502).
    UNROUTE_SERVICE = "unroute_service"
    DELETE_SERVICE = "delete_service"


@dataclass(frozen=True)
class Target:
    """One desired service as the planner sees it (the engine resolves config, autoscale, stop)."""

    name: str
    spec_hash: str
    count: int
    keep: bool = False  # touch nothing (config error, blocked, stalled, backoff)
    keep_reason: str = ""
    drain_grace: float = 30.0  # a draining replica is removed after this long at the latest
    drain_min: float = 2.0  # ... and not before this long, so the gateway has reloaded routes
    summary: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Desired:
    services: Mapping[str, Target]
    prune: bool = True  # False: services absent from `services` are left alone (empty commit)
    # A removed service's replicas are stopped this long after it left the routes at the latest,
    # and not before `drain_min` (the gateway reloads routes) unless nothing is in flight: as rolls.
    drain_grace: float = 30.0
    drain_min: float = 2.0


@dataclass(frozen=True)
class Step:
    action: Action
    service: str
    replica: str | None = None
    ordinal: int | None = None
    replaces: str | None = None
    reason: str = ""


@dataclass(frozen=True)
class FieldChange:
    field: str
    old: str | None
    new: str | None


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...] = ()
    changes: Mapping[str, tuple[FieldChange, ...]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        """Nothing to do: no step and no field change (a route-only change has no step)."""
        return not self.steps and not self.changes

    def counts(self) -> dict[Action, int]:
        out: dict[Action, int] = {}
        for s in self.steps:
            out[s.action] = out.get(s.action, 0) + 1
        return out

    def for_service(self, name: str) -> list[Step]:
        return [s for s in self.steps if s.service == name]

    def services(self) -> list[str]:
        """Services with a step, then services whose only change is a routing field."""
        return list(dict.fromkeys([*(s.service for s in self.steps), *self.changes]))


_PHASE_RANK = {
    ReplicaPhase.FAILED: 0,
    ReplicaPhase.PROVISIONING: 1,
    ReplicaPhase.DRAINING: 2,
    ReplicaPhase.READY: 3,
}


def usefulness(r: ReplicaRecord, spec_hash: str) -> tuple[int, int, int, int, str]:
    """Sort key, least useful first: not ready, then outdated, then fewest in-flight requests."""
    return (_PHASE_RANK[r.phase], int(r.spec_hash == spec_hash), r.in_flight, -r.ordinal, r.id)


def _free_ordinals(used: set[int]) -> Iterator[int]:
    """The smallest ordinals not in `used`, in order (lazy: most services take none or one)."""
    i = 0
    while True:
        if i not in used:
            yield i
        i += 1


# Summary fields that change routing, placement or scaling without changing the replica's spec hash
# (auth, the model mapping, probes, rate limits, the replica range and scaling policy): a change of them alone is still a change the plan shows.
# `auth` is in every summary made since they were added, so an older record (no `auth`) is not
# reported as a change of all of them at once.
ROUTE_FIELDS = (
    "auth", "model", "model.chat_template", "model.eos_token", "probes", "rate_limits",
    "spot_policy", "max_price", "regions", "replicas", "scaling",
)  # fmt: skip


def _route_diff(old: Mapping[str, str], new: Mapping[str, str]) -> tuple[FieldChange, ...]:
    if "auth" not in old or old == new:
        return ()
    pick = {k: v for k, v in old.items() if k in ROUTE_FIELDS}
    return _diff(pick, {k: v for k, v in new.items() if k in ROUTE_FIELDS})


# A new service's change list by its summary (by identity, the entry holding the summary): the
# desired set hands back the same summary object for a file that did not change (engine.memo),
# so re-planning 1,000 not-yet-created services makes no change list again. Summaries are never
# mutated once made, and the list is a pure function of one, so `plan` stays pure.
_NEW_DIFFS: dict[int, tuple[Mapping[str, str], tuple[FieldChange, ...]]] = {}


class _Created:
    """A new service's change list not made yet: its summary (see `_Changes`)."""

    __slots__ = ("summary",)

    def __init__(self, summary: Mapping[str, str]) -> None:
        self.summary = summary


class _Changes(Mapping[str, tuple[FieldChange, ...]]):
    """`Plan.changes` as `plan` makes it: a new service's change list (every field of its summary)
    is made when it is first read (a render, `plan --json`), not by `plan` itself: a cold plan of
    1,000 new services is read by name only (reconciler.engine.settled) unless it is shown. Reads
    give what a dict of the made lists would; a made list is kept, so it is made at most once."""

    def __init__(self, items: dict[str, tuple[FieldChange, ...] | _Created]) -> None:
        self._items = items

    def __getitem__(self, name: str) -> tuple[FieldChange, ...]:
        item = self._items[name]
        if isinstance(item, _Created):
            made = _created_diff(item.summary)
            self._items[name] = made
            return made
        return item

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __repr__(self) -> str:
        return repr(dict(self.items()))


def _created_diff(summary: Mapping[str, str]) -> tuple[FieldChange, ...]:
    known = _NEW_DIFFS.get(id(summary))
    if known is not None and known[0] is summary:
        return known[1]
    made = _diff({}, summary)
    _NEW_DIFFS[id(summary)] = (summary, made)
    return made


def _diff(old: Mapping[str, str], new: Mapping[str, str]) -> tuple[FieldChange, ...]:
    keys = sorted(set(old) | set(new))
    return tuple(FieldChange(k, old.get(k), new.get(k)) for k in keys if old.get(k) != new.get(k))


def _made_step(action: Action, service: str, replica: str | None, ordinal: int | None, reason: str) -> Step:
    """`Step(action, service, replica, ordinal, reason=reason)` without the frozen dataclass's
    `__init__` (one `object.__setattr__` per field): the very same value, at half the cost. A
    cold plan of 1,000 new services makes 2,000 steps (tests/reconciler/test_plan.py compares)."""
    made = _new(Step)
    made.__dict__.update(action=action, service=service, replica=replica, ordinal=ordinal, replaces=None, reason=reason)
    return made


_new = object.__new__


def _new_service_steps(t: Target) -> list[Step]:
    """`_service_steps(t, (), now)`, which is this for a service without replicas (by test)."""
    n = max(0, t.count)
    name, spec_hash, reason = t.name, t.spec_hash, f"scale to {n}"
    return [_made_step(Action.ADD_REPLICA, name, replica_id(name, spec_hash, o), o, reason) for o in range(n)]


def _service_steps(t: Target, replicas: Sequence[ReplicaRecord], now: float) -> list[Step]:
    steps: list[Step] = []
    rs = sorted(replicas, key=lambda r: (r.ordinal, r.id))
    n = max(0, t.count)

    for r in rs:
        if r.phase is ReplicaPhase.DRAINING:
            since = r.draining_since if r.draining_since is not None else now
            waited = now - since
            if waited >= t.drain_grace or (r.in_flight == 0 and waited >= t.drain_min):
                steps.append(Step(Action.REMOVE_REPLICA, t.name, r.id, r.ordinal, reason="drained"))

    live = [r for r in rs if r.phase is not ReplicaPhase.DRAINING]
    cur = [r for r in live if r.spec_hash == t.spec_hash]
    out = [r for r in live if r.spec_hash != t.spec_hash]

    # Outdated replicas that serve nothing go at once; ready ones wait for their replacements.
    for r in out:
        if r.phase is not ReplicaPhase.READY:
            steps.append(
                Step(Action.REMOVE_REPLICA, t.name, r.id, r.ordinal, reason="outdated and not serving")
            )
    out_ready = sorted(
        (r for r in out if r.phase is ReplicaPhase.READY), key=lambda r: usefulness(r, t.spec_hash)
    )

    # Scale down: the least useful current replicas beyond the count.
    if len(cur) > n:
        by_use = sorted(cur, key=lambda r: usefulness(r, t.spec_hash))
        excess, keep = by_use[: len(cur) - n], by_use[len(cur) - n :]
        for r in excess:
            if r.phase is ReplicaPhase.READY:
                steps.append(Step(Action.DRAIN_REPLICA, t.name, r.id, r.ordinal, reason=f"scale down to {n}"))
            else:
                steps.append(
                    Step(Action.REMOVE_REPLICA, t.name, r.id, r.ordinal, reason=f"scale down to {n}")
                )
        cur = sorted(keep, key=lambda r: (r.ordinal, r.id))

    for r in cur:
        if r.phase is ReplicaPhase.FAILED and (r.next_attempt_at is None or now >= r.next_attempt_at):
            steps.append(
                Step(
                    Action.RESTART_REPLICA,
                    t.name,
                    r.id,
                    r.ordinal,
                    reason=f"failed: {r.last_error or 'exited'}",
                )
            )

    used = {r.ordinal for r in rs if r.spec_hash == t.spec_hash}
    free = _free_ordinals(used)
    missing = n - len(cur)
    if missing > 0:
        # Capacity lost (nothing to replace): add at once. Rolling: one surge at a time, and
        # only while every new replica already started is ready.
        deficit = max(0, n - len(cur) - len(out_ready)) if out_ready else missing
        for _ in range(deficit):
            o = next(free)
            steps.append(
                Step(
                    Action.ADD_REPLICA, t.name, replica_id(t.name, t.spec_hash, o), o, reason=f"scale to {n}"
                )
            )
        pending = any(r.phase is not ReplicaPhase.READY for r in cur)
        if out_ready and missing > deficit and not pending and deficit == 0:
            o = next(free)
            old = next((r for r in out_ready if r.ordinal == o), out_ready[0])
            steps.append(
                Step(
                    Action.REPLACE_REPLICA,
                    t.name,
                    replica_id(t.name, t.spec_hash, o),
                    o,
                    replaces=old.id,
                    reason="rolling update",
                )
            )

    # Retire outdated replicas once enough current ones are ready to carry the count.
    # Those whose ordinal a ready new replica took over go first.
    ready_cur = [r for r in cur if r.phase is ReplicaPhase.READY]
    taken = {r.ordinal for r in ready_cur}
    out_ready.sort(key=lambda r: (r.ordinal not in taken, usefulness(r, t.spec_hash)))
    surplus = len(ready_cur) + len(out_ready) - n
    for r in out_ready[: max(0, min(surplus, len(out_ready)))]:
        steps.append(
            Step(Action.DRAIN_REPLICA, t.name, r.id, r.ordinal, reason="replaced by a ready new replica")
        )
    return steps


def _steady(t: Target, replicas: Sequence[ReplicaRecord]) -> bool:
    """Exactly `t.count` replicas, every one READY at `t.spec_hash`: `_service_steps` gives no
    step (nothing draining, failed, outdated, missing or beyond the count), so it is not called:
    a plan after a restart has 1,000 such services (tests/reconciler/test_plan.py checks)."""
    if len(replicas) != max(0, t.count):
        return False
    spec_hash, ready = t.spec_hash, ReplicaPhase.READY
    return all(r.phase is ready and r.spec_hash == spec_hash for r in replicas)


def _deletion_steps(desired: Desired, a: ServiceRecord, now: float) -> list[Step]:
    """A removed service: out of the routes first, replicas stopped once they drained."""
    serving = [r for r in a.replicas if r.address and r.phase in (ReplicaPhase.READY, ReplicaPhase.DRAINING)]
    if a.unrouted_at is None and serving:
        return [Step(Action.UNROUTE_SERVICE, a.name, reason="config removed: out of the routes, stopped once drained")]
    waited = now - (a.unrouted_at if a.unrouted_at is not None else now)
    busy = any(r.in_flight for r in serving)
    if not serving or waited >= desired.drain_grace or (not busy and waited >= desired.drain_min):
        return [Step(Action.DELETE_SERVICE, a.name, reason="config removed")]
    return []


def plan(desired: Desired, actual: Mapping[str, ServiceRecord], now: float, skip: Collection[str] = ()) -> Plan:
    """Steps that move `actual` towards `desired`, deterministic for equal inputs. `skip`: services
    a previous plan over the very same inputs gave nothing to do (reconciler.engine.settled)."""
    steps: list[Step] = []
    changes: dict[str, tuple[FieldChange, ...] | _Created] = {}
    notes: list[str] = []
    if len(_NEW_DIFFS) > 4 * len(desired.services) + 1_000:
        _NEW_DIFFS.clear()  # bounded: room for this plan's services and the next revision's
    for name in sorted((desired.services.keys() | actual.keys()) - set(skip)):
        t = desired.services.get(name)
        a = actual.get(name)
        if t is None:
            assert a is not None
            if not desired.prune:
                notes.append(f"{name}: no longer in the config, kept because pruning is off")
                continue
            steps.extend(_deletion_steps(desired, a, now))
            continue
        if t.keep:
            notes.append(f"{name}: left as it is: {t.keep_reason}")
            continue
        if a is None:
            steps.append(_made_step(Action.CREATE_SERVICE, name, None, None, "new service"))
            changes[name] = _Created(t.summary)  # its change list is made when read
            steps.extend(_new_service_steps(t))
            continue
        if a.spec_hash != t.spec_hash:
            changes[name] = _diff(a.spec_summary, t.summary)
        elif routed := _route_diff(a.spec_summary, t.summary):
            changes[name] = routed  # applied by publishing the routes; no replica step
        if not _steady(t, a.replicas):
            steps.extend(_service_steps(t, a.replicas, now))
    return Plan(steps=tuple(steps), changes=_Changes(changes), notes=tuple(notes))
