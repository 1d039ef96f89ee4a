"""Inputs of a pass derived once: the desired set's per-service maps, and requests in flight.

Why a module of its own: both run on every pass for every service, so each is written to do no
per-service work when nothing changed (reconciler.engine.settled has the rest of that design):
the maps are kept while the loader hands back the same desired set, and in-flight counts are
looked at only for the services the gateway's stats list (or listed last time).
"""

from __future__ import annotations

from collections.abc import Mapping

from reconciler.config.models import ProbeSpec
from reconciler.engine.autoscale import ServiceStats
from reconciler.engine.desired import DesiredSet
from reconciler.state.records import StateDoc
from tidegate.routes import ModelRoute

# Per service of a desired set: spec hash; the backends used; model route; probes.
Maps = tuple[dict[str, str], set[str], dict[str, ModelRoute | None], dict[str, tuple[ProbeSpec, ...]]]


class DesiredMaps:
    """`of(ds)`: the maps of `ds`, made again only for another desired set object."""

    def __init__(self) -> None:
        self._known: tuple[DesiredSet | None, Maps] | None = None

    def of(self, ds: DesiredSet | None) -> Maps:
        known = self._known
        if known is not None and known[0] is ds:
            return known[1]
        services = ds.services if ds is not None else {}
        maps = (
            {n: d.spec_hash for n, d in services.items()},
            {d.backend for d in services.values()},
            {n: d.route.model for n, d in services.items()},
            {n: d.route.probes for n, d in services.items()},
        )
        self._known = (ds, maps)
        return maps


def note_in_flight(doc: StateDoc, stats: Mapping[str, ServiceStats], counted_before: set[str]) -> set[str]:
    """Set each replica's requests in flight from the gateway's stats (0 when not listed); returns
    the services with a count above 0, for the next call. Only services in the stats or in
    `counted_before` are looked at: every other replica is at 0 already (the field is set nowhere
    else and never persisted). Assigned only when it differs: an assignment is a record edit."""
    counted: set[str] = set()
    for name in stats.keys() | counted_before:
        rec = doc.services.get(name)
        if rec is None:
            continue
        st = stats.get(name)
        for r in rec.replicas:
            n = st.per_upstream_in_flight.get(r.id, 0) if st else 0
            if r.in_flight != n:
                r.in_flight = n
            if n:
                counted.add(name)
    return counted
