"""What the cloud backends (AWS, Azure) share: resource tags, offer selection and the capacity loop.

Why: both backends answer `offers()` the same way (the bundled catalog for the configured
regions, optionally refined by a live API call cached for a TTL, then `select_offers`), try the
offers of a `create` in the same order (the planned offer first, then the rest, at most
`max_offer_attempts`, moving on only when an offer has no capacity) and label their resources
with the same tags. Keeping that here means the two differ only where the clouds differ.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from backends.base import Offer, PermanentError, ReplicaInfo, ReplicaSpec, Requirements, TemporaryError
from backends.cloud.catalog import select_offers

log = logging.getLogger(__name__)

# Tags (labels) on every cloud resource; `owner_tags` in backends/base.py sets the first four.
OWNER, REPLICA, SERVICE, SPEC, PORT = (
    "tidegate:owner",
    "tidegate:replica",
    "tidegate:service",
    "tidegate:spec",
    "tidegate:port",
)


class NoCapacity(Exception):
    """This offer has no capacity (or quota) right now; the caller tries the next one."""


class CloudOffers:
    """One backend's offers: its slice of the catalog, refined live per region and cached.

    `refine(region, base)` asks the cloud which of `base` it really offers (and at what price); if
    it fails, the catalog alone answers for that region until the TTL passes."""

    def __init__(
        self,
        backend: str,
        catalog: Sequence[Offer],
        regions: Sequence[str],
        *,
        live: bool,
        ttl: float,
        clock: Callable[[], float],
        refine: Callable[[str, list[Offer]], list[Offer]],
    ) -> None:
        self.backend = backend
        self.catalog = [o for o in catalog if o.backend == backend]
        self.regions = list(regions)
        self._live_enabled = live
        self._ttl = ttl
        self._clock = clock
        self._refine = refine
        self._live: dict[str, tuple[float, list[Offer]]] = {}

    def offers(self, requirements: Requirements) -> Sequence[Offer]:
        if requirements.backends and self.backend not in requirements.backends:
            return []
        found: list[Offer] = []
        for region in self.regions:
            if not requirements.regions or region in requirements.regions:
                found.extend(self.for_region(region))
        return select_offers(found, requirements)

    def for_region(self, region: str) -> list[Offer]:
        base = [o for o in self.catalog if o.region == region]
        if not self._live_enabled or not base:
            return base
        now = self._clock()
        cached = self._live.get(region)
        if cached and now - cached[0] < self._ttl:
            return cached[1]
        try:
            refined = self._refine(region, base)
        except Exception as e:  # unreachable API: the catalog alone answers
            log.info("%s %s: using catalog offers only (%s)", self.backend, region, e)
            refined = base
        self._live[region] = (now, refined)
        return refined

    def match(self, region: str | None, instance_type: str | None, spot: bool) -> Offer | None:
        """The catalog offer a running resource was launched from (None when the catalog moved on)."""
        return next(
            (
                o
                for o in self.catalog
                if o.region == region and o.instance_type == instance_type and o.spot == spot
            ),
            None,
        )

    def candidates(self, spec: ReplicaSpec) -> list[Offer]:
        """The planned offer first, then every other matching one; none is a permanent error."""
        out: list[Offer] = []
        if spec.offer is not None and spec.offer.backend == self.backend:
            out.append(spec.offer)
        out += [o for o in self.offers(spec.requirements) if o not in out]
        if not out:
            raise PermanentError(f"{self.backend}: no offer matches the requirements")
        return out


def launch_first_with_capacity(
    backend: str,
    candidates: Sequence[Offer],
    max_attempts: int,
    launch: Callable[[Offer], ReplicaInfo],
    no_capacity: Callable[[Offer, NoCapacity], str],
) -> ReplicaInfo:
    """Launch on the first offer with capacity. `no_capacity` logs and cleans up after a failed
    offer and returns the reason; when every attempt failed, the reasons make a TemporaryError."""
    reasons = []
    for offer in candidates[:max_attempts]:
        try:
            return launch(offer)
        except NoCapacity as e:
            reasons.append(no_capacity(offer, e))
    raise TemporaryError(f"{backend}: no capacity: " + "; ".join(reasons))
