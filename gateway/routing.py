"""The routing table: which service answers a host, a path prefix or a model name.

One immutable `RouteTable` built from a `RoutesSnapshot` and swapped in one assignment
(`Router.set_snapshot`), so a request sees either the old table or the new one, never half of
each. A request keeps the `ServiceRoute` it started with; a replica removed meanwhile finishes
what it has. Requests held for a cold start wait on `Router.changed`, set at every swap.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tidegate.routes import ROUTES_FILE, RoutesSnapshot, ServiceRoute
from tidegate.routes_io import read_snapshot

log = logging.getLogger("tidegate.gateway")


@dataclass(frozen=True)
class RouteTable:
    snapshot: RoutesSnapshot
    by_host: dict[str, ServiceRoute] = field(default_factory=dict)
    by_model: dict[str, ServiceRoute] = field(default_factory=dict)

    @classmethod
    def build(cls, snapshot: RoutesSnapshot) -> RouteTable:
        by_model = {s.model.name: s for s in snapshot.services.values() if s.model is not None and not s.withdrawn}
        return cls(snapshot, snapshot.by_host(), by_model)


class Router:
    """The current table, swapped from any thread; `on_swap(live replica ids, live urls)` runs on
    the serving loop after each swap (to forget counters and close pools of removed replicas)."""

    def __init__(self, domain: str, on_swap: Callable[[set[str], set[str]], None]) -> None:
        self.table = RouteTable.build(RoutesSnapshot(domain=domain))
        self._on_swap = on_swap
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self.changed = asyncio.Event()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self.changed = asyncio.Event()

    def service(self, name: str) -> ServiceRoute | None:
        return self.table.snapshot.services.get(name)

    def set_snapshot(self, snapshot: RoutesSnapshot) -> None:
        """Swap the routing table (thread-safe; `tidegate up` may call this from its own thread)."""
        self.table = RouteTable.build(snapshot)
        live = {u.replica_id for s in snapshot.services.values() for u in s.upstreams}
        urls = {u.url for s in snapshot.services.values() for u in s.upstreams}
        if self._loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._after_swap(live, urls)
        else:
            self._loop.call_soon_threadsafe(self._after_swap, live, urls)

    def _after_swap(self, live: set[str], urls: set[str]) -> None:
        self._on_swap(live, urls)
        old, self.changed = self.changed, asyncio.Event()
        old.set()  # wakes every held request to look at the new table

    def reload(self, state_dir: Path) -> None:
        if self.table.snapshot.services and not (state_dir / ROUTES_FILE).exists():
            # Deleted under a running gateway: keep serving; the reconciler publishes it again.
            log.warning("routes.json is missing, keeping the previous routes until it is published again")
            return
        try:
            snapshot = read_snapshot(state_dir)
        except (OSError, ValueError) as e:
            log.warning("routes.json unreadable, keeping the previous routes: %s", e)
            return
        if snapshot.serial != self.table.snapshot.serial or snapshot != self.table.snapshot:
            self.set_snapshot(snapshot)
