"""Holding requests through a cold start: a service at zero replicas wakes the reconciler and waits.

A held request counts as demand (the autoscaler sees it at once), repeats its demand signal every
`DEMAND_REPEAT` s (a reconciler may have missed one), and waits until the routing table shows a
ready replica, its service is removed, the hold times out (503 + Retry-After), or its client
hangs up. The queue per service is bounded (`hold_queue`).

The signal is a file (the reconciler may be another process). A reconciler in the same process
(`tidegate up`) also sets `on_demand`, called right after the file is written, so its loop wakes
at once instead of when its folder watcher notices the file.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from gateway.asgi import ClientGone, Receive
from gateway.balancer import has_ready
from gateway.errors import GatewayError
from gateway.routing import Router
from gateway.settings import GatewaySettings
from gateway.stats.counters import ServiceStats
from gateway.upstream.relay import wait_disconnect
from tidegate.routes import ServiceRoute
from tidegate.signals import send_signal

log = logging.getLogger("tidegate.gateway")

DEMAND_REPEAT = 10.0


class ColdStart:
    def __init__(self, settings: GatewaySettings, router: Router) -> None:
        self.settings = settings
        self.router = router
        self._last_demand: dict[str, float] = {}
        # Called (from the event loop: must be quick and thread-safe) after a demand signal is written.
        self.on_demand: Callable[[str], None] | None = None

    def demand(self, service: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_demand.get(service, float("-inf")) < 1.0:
            return
        self._last_demand[service] = now
        try:
            send_signal(self.settings.state_dir, "demand", {"service": service})
        except OSError as e:
            log.warning("cannot signal demand for %s: %s", service, e)
            return
        if self.on_demand is not None:
            self.on_demand(service)

    async def ready_route(
        self, route: ServiceRoute, st: ServiceStats, receive: Receive | None = None
    ) -> tuple[ServiceRoute, float | None]:
        """The route with a ready replica; at zero replicas (min_replicas 0) hold until one is.

        Returns the route to use and, when the request was held, how long it waited. With
        `receive` (the request body already read), a client hanging up ends the hold at once, so
        `held` counts only requests someone still waits for.
        """
        if has_ready(route.upstreams):
            return route, None
        if route.min_replicas > 0:
            raise GatewayError(503, f"service {route.name!r} has no ready replica", "service_unavailable", "no_replica", retry_after=5)
        if st.held >= self.settings.hold_queue:
            raise GatewayError(503, f"service {route.name!r} is starting and its queue is full", "service_unavailable", "queue_full", retry_after=10)
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + self.settings.hold_timeout
        st.held += 1
        st.held_gauge.inc()
        gone = asyncio.ensure_future(wait_disconnect(receive)) if receive is not None else None
        try:
            self.demand(route.name)
            while True:
                current = self.router.service(route.name)
                if current is None:
                    raise GatewayError(404, f"service {route.name!r} was removed", code="service_not_found")
                if has_ready(current.upstreams):
                    return current, loop.time() - start
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise GatewayError(
                        503, f"service {route.name!r} did not start within {self.settings.hold_timeout:g} s",
                        "service_unavailable", "cold_start_timeout", retry_after=30,
                    )
                changed = asyncio.ensure_future(self.router.changed.wait())
                try:
                    waiters = {changed} if gone is None else {changed, gone}
                    done, _ = await asyncio.wait(
                        waiters, timeout=min(remaining, DEMAND_REPEAT), return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    changed.cancel()
                if gone is not None and gone in done:
                    raise ClientGone
                if not done:
                    self.demand(route.name, force=True)
        finally:
            st.held -= 1
            st.held_gauge.dec()
            if gone is not None:
                gone.cancel()
