"""Views derived from the state document: the routes snapshot and the status rows of `tidegate ps`.

Why: both are pure projections of `state.json` (routes only ever list READY replicas that answer their
liveness probe — `probe_failures == 0`, see reconciler.engine.liveness — plus
DRAINING ones flagged so the gateway finishes their in-flight requests), so they are computed the
same way by the owning `up` process and by read-only commands in another terminal.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from reconciler.state.records import ReplicaPhase, ServiceRecord, ServiceStatus, StateDoc
from tidegate.routes import RoutesSnapshot, ServiceRoute, TunnelRoute, Upstream


@dataclass(frozen=True)
class ReplicaView:
    id: str
    ordinal: int
    phase: str
    backend: str
    address: str | None
    spec_hash: str
    current: bool  # runs the service's current spec
    started_at: float | None
    ready_at: float | None
    attempts: int
    last_error: str | None
    log_tail: tuple[str, ...] = ()
    offer: str | None = None
    price: float | None = None  # USD/hour on a paid cloud offer
    machine: str | None = None  # the host of a local-backend replica
    probe_failures: int = 0  # READY but failing its liveness probe: out of the routes
    probe_passes: int = 0  # PROVISIONING with dstack `probes`: passes in a row so far


@dataclass(frozen=True)
class ServiceView:
    name: str
    revision: str | None
    status: str
    reason: str
    ready: int
    desired: int
    host: str | None
    stopped: bool
    last_scaling: str | None  # the last recorded change of the replica count, with its reason
    replicas: tuple[ReplicaView, ...]
    scaling_now: str | None = None  # the autoscaler's latest decision (only known to the owner)
    scaling_history: tuple[str, ...] = ()  # every recorded change of the count (oldest first)
    scaling_pending: str | None = None  # a change the autoscaler wants that a delay holds back
    diagnostics: tuple[str, ...] = ()  # its config file's errors at the current revision

    @property
    def cost_per_hour(self) -> float:
        """What the service's replicas cost now (USD/hour): every replica that holds an instance."""
        return sum(r.price or 0.0 for r in self.replicas if r.phase != "gone")


# name, RouteInfo identity, upstreams, stopped, withdrawn, preview PR -> (the RouteInfo, its
# route): a pass over 1,000 unchanged services builds no route again, and equal routes are the
# very same objects, so comparing two snapshots is mostly identity checks (engine.persist).
_ROUTES: dict[tuple[object, ...], tuple[object, ServiceRoute]] = {}


def build_routes(doc: StateDoc, domain: str, preview_prs: Mapping[str, int] | None = None) -> RoutesSnapshot:
    """`preview_prs`: preview service name -> its pull request (marks the route as a preview).

    Routes are built with `model_construct` (no validation): every value comes from records
    already validated as the very types the route models hold (RouteInfo's ModelRoute and
    RateLimit, strings, ints); a test holds the result equal to a validated one. Each is kept
    (`_ROUTES`) while its inputs stay the same."""
    services: dict[str, ServiceRoute] = {}
    if len(_ROUTES) > 4 * len(doc.services) + 1_000:
        _ROUTES.clear()
    for name in sorted(doc.services):
        rec = doc.services[name]
        route = rec.route
        if route is None:
            continue
        ups: list[tuple[str, str, bool, TunnelRoute | None]] = []
        for r in rec.replicas:
            if r.address and r.phase is ReplicaPhase.READY and not r.probe_failures:
                ups.append((r.id, r.address, False, r.tunnel))
            elif r.address and r.phase is ReplicaPhase.DRAINING:
                ups.append((r.id, r.address, True, r.tunnel))
        pr = (preview_prs or {}).get(name)
        key = (name, id(route), tuple(ups), rec.stopped, rec.unrouted_at is not None, pr)
        known = _ROUTES.get(key)
        if known is not None and known[0] is route:
            services[name] = known[1]
            continue
        fields: dict[str, object] = {
            "name": name,
            "host": route.host,
            "auth": route.auth,
            "upstreams": tuple(_upstream(i, u, d, t) for i, u, d, t in ups),
            "model": route.model,
            # A stopped service must not have requests held for it (nothing will start): the
            # gateway holds only for services that may sit at zero, so say it may not.
            "min_replicas": max(1, route.min_replicas) if rec.stopped else route.min_replicas,
            "max_replicas": route.max_replicas,
            "preview_pr": pr,
            "rate_limits": tuple(route.rate_limits),
            "stopped": rec.stopped,
            "withdrawn": rec.unrouted_at is not None,
        }
        services[name] = ServiceRoute.model_construct(**fields)  # type: ignore[arg-type]
        _ROUTES[key] = (route, services[name])
    revision = doc.last_snapshot.revision if doc.last_snapshot else None
    return RoutesSnapshot(serial=doc.serial, revision=revision, domain=domain, services=services)


def _upstream(replica_id: str, url: str, draining: bool, tunnel: TunnelRoute | None) -> Upstream:
    if draining:  # set only when true, as the validated route had it (fields set, JSON alike)
        return Upstream.model_construct(replica_id=replica_id, url=url, draining=True, tunnel=tunnel)
    return Upstream.model_construct(replica_id=replica_id, url=url, tunnel=tunnel)


def service_status(rec: ServiceRecord) -> tuple[ServiceStatus, str]:
    """A status for a service the engine is actively reconciling (kept/blocked are set elsewhere)."""
    ready = sum(1 for r in rec.replicas if r.phase is ReplicaPhase.READY and r.spec_hash == rec.spec_hash)
    failed = [r for r in rec.replicas if r.phase is ReplicaPhase.FAILED]
    outdated = [
        r for r in rec.replicas if r.spec_hash != rec.spec_hash and r.phase is not ReplicaPhase.DRAINING
    ]
    if rec.stopped:
        return (
            ServiceStatus.STOPPED,
            "stopped by `tidegate stop`; stays stopped across commits until `tidegate start`",
        )
    if rec.stalled_spec and rec.stalled_spec == rec.spec_hash:
        return ServiceStatus.STALLED, rec.reason
    if rec.backoff_until is not None:
        return ServiceStatus.DEGRADED, rec.reason
    if rec.desired_count == 0 and not rec.replicas:
        return ServiceStatus.SCALED_TO_ZERO, "no replicas until a request arrives"
    if failed:
        r = failed[0]
        return ServiceStatus.DEGRADED, f"{len(failed)} replica(s) failed; {r.id}: {r.last_error or 'exited'}"
    silent = [r for r in rec.replicas if r.phase is ReplicaPhase.READY and r.probe_failures]
    if silent:
        r = silent[0]
        return (
            ServiceStatus.DEGRADED,
            f"{len(silent)} replica(s) not answering (out of the routes); {r.id}: {r.last_error or ''}",
        )
    if ready >= rec.desired_count and not outdated and len(rec.replicas) == ready:
        return ServiceStatus.RUNNING, ""
    probing = _probe_progress(rec)
    if ready == 0 and not outdated:
        return ServiceStatus.PENDING, probing or "waiting for a replica to pass its readiness probe"
    return ServiceStatus.UPDATING, f"{ready}/{rec.desired_count} ready" + (
        f", {len(outdated)} outdated" if outdated else ""
    ) + (f"; {probing}" if probing else "")


def _probe_progress(rec: ServiceRecord) -> str | None:
    """With dstack `probes`: how far the first starting replica is (`ps` shows it)."""
    probes = rec.route.probes if rec.route else ()
    if not probes:
        return None
    needed = max(p.ready_after for p in probes)
    for r in rec.replicas:
        if r.phase is ReplicaPhase.PROVISIONING and (r.probe_passes or r.last_error):
            if r.last_error:
                return f"{r.id}: {r.last_error}"
            return f"{r.id}: probes passed {r.probe_passes}/{needed}"
    return None


def _pending(rec: ServiceRecord) -> str | None:
    """The deferred decision still in force: the latest one recorded while `scaling_wanted` is set."""
    if rec.scaling_wanted is None:
        return None
    return next((h.detail for h in reversed(rec.history) if h.event == "scaling deferred"), None)


def status_views(doc: StateDoc, logs: Mapping[str, tuple[str, ...]] | None = None) -> list[ServiceView]:
    out: list[ServiceView] = []
    for name in sorted(doc.services):
        rec = doc.services[name]
        ready = sum(1 for r in rec.replicas if r.phase is ReplicaPhase.READY and not r.probe_failures)
        last = rec.scaling[-1] if rec.scaling else None
        out.append(
            ServiceView(
                name=name,
                revision=rec.revision,
                status=str(rec.status),
                reason=rec.reason,
                ready=ready,
                desired=rec.desired_count,
                host=rec.route.host if rec.route else None,
                stopped=rec.stopped,
                last_scaling=f"{last.previous} -> {last.count}: {last.reason}" if last else None,
                scaling_history=tuple(f"{x.previous} -> {x.count}: {x.reason}" for x in rec.scaling),
                scaling_pending=_pending(rec),
                diagnostics=tuple(rec.diagnostics),
                replicas=tuple(
                    ReplicaView(
                        id=r.id,
                        ordinal=r.ordinal,
                        phase=str(r.phase),
                        backend=r.backend,
                        address=r.address,
                        spec_hash=r.spec_hash[:8],
                        current=r.spec_hash == rec.spec_hash,
                        started_at=r.started_at,
                        ready_at=r.ready_at,
                        attempts=r.attempts,
                        last_error=r.last_error,
                        log_tail=(logs or {}).get(r.id, ()),
                        offer=r.offer,
                        machine=r.machine,
                        price=r.price,
                        probe_failures=r.probe_failures,
                        probe_passes=r.probe_passes,
                    )
                    for r in rec.replicas
                ),
            )
        )
    return out
