"""Choosing where each desired service runs: the cheapest offer of its backend, or why none.

Why a module of its own: it is the one step of building the desired set that asks the backends
(`offers()` and `can_run()`, which only the local one answers with a reason), so it is kept apart
from the pure desired-set builder and from the engine that calls it each pass.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TypeVar
from weakref import WeakKeyDictionary

from backends.base import BackendRegistry, Offer, Requirements
from reconciler.engine import memo
from reconciler.engine.desired import DesiredService, DesiredSet

Catalog = Callable[[Requirements], Sequence[Offer]]


def with_offers(
    ds: DesiredSet,
    backends: BackendRegistry,
    catalog: Catalog | None = None,
    running: Mapping[str, str] | None = None,
) -> tuple[DesiredSet, bool]:
    """Pick the cheapest offer per service; a service nothing offers is blocked with the reason.
    A service without `backends:` (`d.candidates`) goes to the backend with the cheapest offer
    that can run it, as dstack does; on a tie the default backend (listed first) wins. A service
    that already runs on one of them (`running`: service -> backend) stays there while that backend
    can still run it: a price change or a flaky price API never moves replicas between clouds.
    `catalog` (a pull request's plan, where production's clouds are not configured): a service
    no configured backend offers is priced from the offline catalog instead of blocked, with a
    warning, so the reviewer sees what it would cost."""
    services: dict[str, DesiredService] = {}
    blocked = dict(ds.blocked)
    warnings = dict(ds.warnings)
    complete = True
    asked = _Offers(backends)
    with _LAST_LOCK:
        last = _LAST_PLACED.get(backends, {}) if memo.enabled else {}
    placed: dict[str, tuple[DesiredService, Offer, DesiredService]] = {}
    for name, d in ds.services.items():
        if d.candidates:
            chosen, why, ok = _cheapest(d, asked, (running or {}).get(name))
            complete = complete and ok
            if chosen is None:
                blocked[name] = why
                continue
            d = chosen
        try:
            offers = asked.offers(d.backend, d.template.requirements)
        except Exception as e:  # an unreachable backend: try again next pass
            blocked[name] = f"backend {d.backend} could not list offers: {type(e).__name__}: {e}"
            complete = False
            continue
        if not offers:
            blocked[name] = f"backend {d.backend} has no offer for this service's resources/settings"
            continue
        backend = backends.get(d.backend)
        reason = backend.can_run(d.template)
        if reason:
            blocked[name] = reason
            continue
        kept = last.get(name)
        if kept is not None and kept[0] is d and kept[1] is offers[0]:
            services[name] = kept[2]  # the same service on the same offer (answers kept, `_Offers`)
        else:
            services[name] = _placed(d, offers[0])
        placed[name] = (d, offers[0], services[name])
    if memo.enabled:
        with _LAST_LOCK:
            _LAST_PLACED[backends] = placed
    if catalog is not None:
        for name, why in list(blocked.items()):
            unplaced = ds.services.get(name)
            if unplaced is None or name in services:
                continue
            found = [o for o in catalog(unplaced.template.requirements) if o.backend not in backends]
            if found:
                offer = found[0]
                del blocked[name]
                services[name] = replace(
                    unplaced,
                    template=replace(unplaced.template, offer=offer),
                    summary=_summary_on(unplaced.summary, offer.backend, backends),
                )
                note = (
                    f"priced from the offline catalog: {why}; {offer.backend} is not configured for this plan"
                )
                warnings[name] = f"{warnings[name]}; {note}" if name in warnings else note
    return replace(ds, services=services, blocked=blocked, warnings=warnings), complete


class _Offers:
    """A backend's offers asked once per (backend, requirements) in one `with_offers` call: a
    1,000-service repo has a handful of distinct resource specs, and one pass sees one answer per
    spec. Failures are remembered too (the pass blocks every service that asked, as before).
    Every call asks again (prices, catalogs and the backend set may change between passes); an
    answer equal to the last call's is replaced by that one (`_LAST_ANSWERS`)."""

    def __init__(self, backends: BackendRegistry) -> None:
        self.backends = backends
        self._asked: dict[tuple[str, Requirements], Sequence[Offer] | Exception] = {}
        # (backend, id of the requirements) -> (them, the answer): most services of a file share
        # one Requirements object (engine.desired_parts._requirements, interned), found without
        # hashing its fields
        self._by_id: dict[tuple[str, int], tuple[Requirements, Sequence[Offer] | Exception]] = {}
        with _LAST_LOCK:
            self._last = _LAST_ANSWERS.setdefault(backends, {}) if memo.enabled else {}

    def offers(self, backend: str, requirements: Requirements) -> Sequence[Offer]:
        seen = self._by_id.get((backend, id(requirements)))
        if seen is not None and seen[0] is requirements:
            found = seen[1]
        else:
            found = self._ask(backend, requirements)
            self._by_id[(backend, id(requirements))] = (requirements, found)
        if isinstance(found, Exception):
            raise found
        return found

    def _ask(self, backend: str, requirements: Requirements) -> Sequence[Offer] | Exception:
        key = (backend, requirements)
        try:
            found = self._asked.get(key)
        except TypeError:  # an unhashable requirement (not made by the config models): just ask
            try:
                return self.backends.get(backend).offers(requirements)
            except Exception as e:
                return e
        if found is None:
            try:
                found = self.backends.get(backend).offers(requirements)
            except Exception as e:  # the caller reports it, for every service that asked
                found = e
            else:
                found = self._same_as_before(key, found)
            self._asked[key] = found
        return found


    def _same_as_before(self, key: tuple[str, Requirements], found: Sequence[Offer]) -> Sequence[Offer]:
        """`found`, or an equal answer of an earlier call (its very objects)."""
        with _LAST_LOCK:
            return self._same_locked(key, found)

    def _same_locked(self, key: tuple[str, Requirements], found: Sequence[Offer]) -> Sequence[Offer]:
        before = self._last.get(key)
        if before is None:
            if len(self._last) > 10_000:  # distinct resource specs pile up over years of edits
                self._last.clear()
            before = self._last[key] = []
        answer = list(found)
        for i, earlier in enumerate(before):
            if list(earlier) == answer:
                found = before.pop(i)
                break
        before.insert(0, found)
        del before[_ANSWERS_KEPT:]
        return found


_ANSWERS_KEPT = 4
_LAST_LOCK = threading.Lock()  # the engine's pass and a preview's plan may place at once
# The last answers per (backend, requirements) of each registry (most recent first), and per service what it was
# placed on: an answer equal to one of those is that one (the same Offer objects), so a service
# whose desired state and offer did not change is the very same placed object as last pass
# without building or hashing anything. The offers are still asked every pass.
_LAST_ANSWERS: WeakKeyDictionary[BackendRegistry, dict[tuple[str, Requirements], list[Sequence[Offer]]]]
_LAST_ANSWERS = WeakKeyDictionary()
_LAST_PLACED: WeakKeyDictionary[BackendRegistry, dict[str, tuple[DesiredService, Offer, DesiredService]]]
_LAST_PLACED = WeakKeyDictionary()
memo.on_clear(_LAST_ANSWERS.clear)
memo.on_clear(_LAST_PLACED.clear)


def _cheapest(
    d: DesiredService, asked: _Offers, current: str | None = None
) -> tuple[DesiredService | None, str, bool]:
    """(the service moved to the cheapest candidate backend, or None; why none; all answered).
    `current`, the backend it runs on now, wins whenever it can still run it."""
    best: tuple[float, int, str] | None = None
    reasons: list[str] = []
    complete = True
    backends = asked.backends
    for index, name in enumerate(d.candidates):
        moved = _on(d, name, backends)
        backend = backends.get(name)
        try:
            offers = asked.offers(name, moved.template.requirements)
        except Exception as e:  # an unreachable backend: the others may still run it
            reasons.append(f"{name}: could not list offers: {type(e).__name__}: {e}")
            complete = False
            continue
        if not offers:
            reasons.append(f"{name}: no offer for this service's resources/settings")
            continue
        reason = backend.can_run(moved.template)
        if reason:
            reasons.append(f"{name}: {reason}")
            continue
        if name == current:
            return moved, "", complete
        key = (min(o.price for o in offers), index, name)
        best = key if best is None or key < best else best
    if best is None:
        return None, "no configured backend can run it (" + "; ".join(reasons) + ")", complete
    return _on(d, best[2], backends), "", complete


# A placed or moved service is a pure function of the service (by identity) and the offer or
# backend it gets, so an unchanged service on an unchanged offer is the very same object at every
# pass (the offers themselves are still asked each pass: only what is made from them is kept).
# by the offer's identity (the entry holds it: its id is not reused meanwhile); an answer equal to
# the last pass's is its very objects (`_Offers`)
_PLACED: memo.IdentityMemo[tuple[Offer, DesiredService]] = memo.memo()  # (id of the offer)
_MOVED: memo.IdentityMemo[DesiredService] = memo.memo()  # (backend, whether it ships the checkout)


def _placed(d: DesiredService, offer: Offer) -> DesiredService:
    found = _PLACED.get(
        d, id(offer), lambda: (offer, _evolve(d, template=_evolve(d.template, offer=offer))),
        lambda kept: kept[0] is offer,
    )  # fmt: skip
    return found[1]


T = TypeVar("T")


def _evolve(obj: T, **changes: object) -> T:
    """`dataclasses.replace` for these frozen dataclasses without a `__post_init__` or init-only
    fields (DesiredService, ReplicaSpec), at a tenth of its cost: a cold plan of 1,000 services
    makes 2,000 of them."""
    new = object.__new__(type(obj))
    new.__dict__.update(obj.__dict__, **changes)
    return new


def _on(d: DesiredService, backend: str, backends: BackendRegistry) -> DesiredService:
    if backend == d.backend:
        return d
    return _MOVED.get(d, (backend, backends.ships_workdir(backend)), lambda: _moved(d, backend, backends))


def _moved(d: DesiredService, backend: str, backends: BackendRegistry) -> DesiredService:
    spec_hash = d.candidates[backend]
    return replace(
        d,
        backend=backend,
        spec_hash=spec_hash,
        template=replace(d.template, spec_hash=spec_hash),
        summary=_summary_on(d.summary, backend, backends),
    )


def _summary_on(summary: Mapping[str, str], backend: str, backends: BackendRegistry) -> dict[str, str]:
    """The summary on another backend: one that does not ship the checkout (a cloud, or one not
    configured here) gets no copy of the repository's files."""
    out = {**summary, "backend": backend}
    if not backends.ships_workdir(backend):
        out.pop("files", None)
    return out
