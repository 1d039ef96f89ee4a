"""Choosing where each desired service runs: the cheapest offer of its backend, or why none.

Why a module of its own: it is the one step of building the desired set that asks the backends
(`offers()`, and `can_run()` for backends that are `ScreensSpecs`, like the local one), so it is kept apart from the pure
desired-set builder and from the engine that calls it each pass.
"""

from __future__ import annotations

from dataclasses import replace

from backends.base import BackendRegistry, ScreensSpecs
from reconciler.engine.desired import DesiredService, DesiredSet


def with_offers(ds: DesiredSet, backends: BackendRegistry) -> tuple[DesiredSet, bool]:
    """Pick the cheapest offer per service; a service nothing offers is blocked with the reason."""
    services: dict[str, DesiredService] = {}
    blocked = dict(ds.blocked)
    complete = True
    for name, d in ds.services.items():
        try:
            offers = backends.get(d.backend).offers(d.template.requirements)
        except Exception as e:  # an unreachable backend: try again next pass
            blocked[name] = f"backend {d.backend} could not list offers: {type(e).__name__}: {e}"
            complete = False
            continue
        if not offers:
            blocked[name] = f"backend {d.backend} has no offer for this service's resources/settings"
            continue
        backend = backends.get(d.backend)
        reason = backend.can_run(d.spec_for(0)) if isinstance(backend, ScreensSpecs) else None
        if reason:
            blocked[name] = reason
            continue
        services[name] = replace(d, template=replace(d.template, offer=offers[0]))
    return replace(ds, services=services, blocked=blocked), complete
