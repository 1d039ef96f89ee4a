"""A recording in-memory Backend for engine tests and the reconcile benchmark.

It honours the Backend contract the way a real one must (idempotent create by replica id, delete
of a missing replica is fine, list_owned returns everything it holds) and records every call, so
tests can assert "nothing was started twice". Faults are injected per replica id or service.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from backends.base import BackendError, Offer, ReplicaInfo, ReplicaSpec, ReplicaStatus, Requirements
from reconciler.engine.probe import ProbeResult
from tidegate.routes import ModelRoute


@dataclass
class FakeBackend:
    """In-memory backend. With every latency 0 (the default) a replica runs as soon as `create`
    returns. Latencies make it behave like a cloud:

    - `create_latency`: seconds the backend takes to start a replica (a VM boot). With `blocking`
      False (the protocol's promise, backends/base.py) `create` returns at once with PROVISIONING
      and `describe`/`list_owned` show RUNNING once it elapsed; with `blocking` True `create`
      holds the caller that long (an SDK waiting on `.result()`, what the Azure backend did).
    - `ready_latency`: seconds after RUNNING until the replica answers its readiness probe
      (`prober()` asks the backend, so the engine sees it as a real replica).
    - `delete_latency`: seconds a delete takes (TERMINATING meanwhile, or held when blocking).
    - `hangs`: service or replica id -> seconds a `create` of it blocks regardless of `blocking`
      (a hung API call); `release()` ends every hang early.

    Thread-safe: the engine's workers call it concurrently. `timer` is the clock latencies use.
    """

    name: str = "local"
    ships_workdir: bool = True  # like the local backend it stands in for
    clock_value: float = 0.0
    replicas: dict[str, ReplicaInfo] = field(default_factory=dict)
    specs: dict[str, ReplicaSpec] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    create_errors: dict[str, BackendError] = field(default_factory=dict)  # service or replica id -> error
    delete_errors: dict[str, BackendError] = field(default_factory=dict)
    no_offers: bool = False
    create_latency: float = 0.0
    ready_latency: float = 0.0
    delete_latency: float = 0.0
    blocking: bool = False
    hangs: dict[str, float] = field(default_factory=dict)
    timer: Callable[[], float] = time.monotonic
    cpus: int = 2
    memory_gb: float = 8.0
    # replica id -> (timer value it runs from, timer value it is gone at)
    _running_at: dict[str, float] = field(default_factory=dict)
    _gone_at: dict[str, float] = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _release: threading.Event = field(default_factory=threading.Event)
    in_flight: dict[str, int] = field(default_factory=dict)  # op -> calls running right now
    max_in_flight: int = 0

    def offers(self, requirements: Requirements) -> Sequence[Offer]:
        self._record("offers", "")
        if self.no_offers:
            return []
        offer = Offer(self.name, "local", "host", cpus=self.cpus, memory_gb=self.memory_gb, gpu=None, spot=False, price=0.0)
        r = requirements
        if not (r.cpus.contains(offer.cpus) and r.memory_gb.contains(offer.memory_gb)) or r.gpu is not None:
            return []
        return [offer]

    def _record(self, op: str, rid: str) -> None:
        with self._lock:
            self.calls.append((op, rid))

    def _enter(self, op: str) -> None:
        with self._lock:
            self.in_flight[op] = self.in_flight.get(op, 0) + 1
            self.max_in_flight = max(self.max_in_flight, sum(self.in_flight.values()))

    def _leave(self, op: str) -> None:
        with self._lock:
            self.in_flight[op] -= 1

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            self._release.wait(seconds)

    def can_run(self, spec: ReplicaSpec) -> str | None:
        return None

    def create(self, spec: ReplicaSpec) -> ReplicaInfo:
        self._record("create", spec.replica_id)
        err = self.create_errors.get(spec.replica_id) or self.create_errors.get(spec.service)
        if err is not None:
            raise err
        with self._lock:
            self._settle(spec.replica_id)
            existing = self.replicas.get(spec.replica_id)
            if existing is not None and existing.status in (ReplicaStatus.RUNNING, ReplicaStatus.PROVISIONING):
                return existing
        self._enter("create")
        try:
            self._wait(self.hangs.get(spec.replica_id, self.hangs.get(spec.service, 0.0)))
            if self.blocking:
                self._wait(self.create_latency)
            with self._lock:
                now = self.timer()
                running_at = now if self.blocking else now + self.create_latency
                info = ReplicaInfo(
                    replica_id=spec.replica_id,
                    backend=self.name,
                    status=ReplicaStatus.RUNNING if running_at <= now else ReplicaStatus.PROVISIONING,
                    address=f"http://fake/{spec.replica_id}",
                    handle=f"h-{spec.replica_id}",
                    service=spec.service,
                    spec_hash=spec.spec_hash,
                    started_at=self.clock_value,
                )
                self.replicas[spec.replica_id] = info
                self.specs[spec.replica_id] = spec
                self._running_at[spec.replica_id] = running_at
                self._gone_at.pop(spec.replica_id, None)
                return info
        finally:
            self._leave("create")

    def _settle(self, replica_id: str) -> ReplicaInfo | None:
        """Move a replica along its latencies (PROVISIONING -> RUNNING, TERMINATING -> gone)."""
        info = self.replicas.get(replica_id)
        if info is None:
            return None
        now = self.timer()
        gone = self._gone_at.get(replica_id)
        if gone is not None and now >= gone:
            self._forget(replica_id)
            return None
        if info.status is ReplicaStatus.PROVISIONING and now >= self._running_at.get(replica_id, now):
            info = replace(info, status=ReplicaStatus.RUNNING)
            self.replicas[replica_id] = info
        return info

    def _forget(self, replica_id: str) -> None:
        self.replicas.pop(replica_id, None)
        self.specs.pop(replica_id, None)
        self._running_at.pop(replica_id, None)
        self._gone_at.pop(replica_id, None)

    def describe(self, replica_id: str) -> ReplicaInfo | None:
        with self._lock:
            return self._settle(replica_id)

    def list_owned(self) -> Sequence[ReplicaInfo]:
        self._record("list_owned", "")
        with self._lock:
            if not self._gone_at:  # nothing on its way out: only starting replicas can move on
                infos = list(self.replicas.values())
                if all(i.status is not ReplicaStatus.PROVISIONING for i in infos):
                    return infos
            return [i for rid in list(self.replicas) if (i := self._settle(rid)) is not None]

    def delete(self, replica_id: str) -> None:
        self._record("delete", replica_id)
        err = self.delete_errors.get(replica_id)
        if err is not None:
            raise err
        self._enter("delete")
        try:
            if self.blocking:
                self._wait(self.delete_latency)
            with self._lock:
                info = self.replicas.get(replica_id)
                if info is None:
                    return
                if self.blocking or self.delete_latency <= 0:
                    self._forget(replica_id)
                elif replica_id not in self._gone_at:
                    self.replicas[replica_id] = replace(info, status=ReplicaStatus.TERMINATING)
                    self._gone_at[replica_id] = self.timer() + self.delete_latency
        finally:
            self._leave("delete")

    def logs(self, replica_id: str, lines: int = 100) -> list[str]:
        with self._lock:
            if replica_id not in self.replicas:
                return []
        return [f"{replica_id}: boom"][-lines:]

    def log_path(self, replica_id: str) -> Path | None:
        return None

    def collect_garbage(self) -> list[Path]:
        return []

    def close(self) -> None:
        pass

    # -- test helpers -------------------------------------------------------------------------
    def release(self) -> None:
        """End every hang (and blocking latency) now."""
        self._release.set()

    def answers(self, replica_id: str) -> bool:
        """True once the replica has run for `ready_latency` seconds (what a probe would see)."""
        with self._lock:
            info = self._settle(replica_id)
            if info is None or info.status is not ReplicaStatus.RUNNING:
                return False
            return self.timer() >= self._running_at.get(replica_id, 0.0) + self.ready_latency

    def prober(self) -> BackendProber:
        return BackendProber(self)

    def crash(self, replica_id: str, message: str = "exit code 1") -> None:
        with self._lock:
            self.replicas[replica_id] = replace(
                self.replicas[replica_id], status=ReplicaStatus.EXITED, message=message
            )

    def creates(self) -> list[str]:
        return [rid for op, rid in self.calls if op == "create"]

    def deletes(self) -> list[str]:
        return [rid for op, rid in self.calls if op == "delete"]

    def running(self, service: str | None = None) -> list[str]:
        with self._lock:
            return sorted(
                rid
                for rid in list(self.replicas)
                if (i := self._settle(rid)) is not None
                and i.status is ReplicaStatus.RUNNING
                and (service is None or i.service == service)
            )


@dataclass
class BackendProber:
    """Readiness as the fake backend says: ready `ready_latency` s after the replica runs."""

    backend: FakeBackend
    probed: list[str] = field(default_factory=list)

    def __call__(self, address: str, model: ModelRoute | None, timeout: float) -> ProbeResult:
        rid = address.rsplit("/", 1)[-1]
        self.probed.append(rid)
        ok = self.backend.answers(rid)
        return ProbeResult(ok, "answers" if ok else "connection refused")


def only_local_ships_workdir(backend: str) -> bool:
    """`build_desired`'s `ships_workdir` for tests that name backends without building them: as
    the real ones answer (`Backend.ships_workdir`), only the local backend ships the checkout."""
    return backend == "local"


@dataclass
class FakeProber:
    """Readiness by replica id: ready unless listed in `unready`."""

    unready: set[str] = field(default_factory=set)
    probed: list[str] = field(default_factory=list)

    def __call__(self, address: str, model: ModelRoute | None, timeout: float) -> ProbeResult:
        rid = address.rsplit("/", 1)[-1]
        self.probed.append(rid)
        return ProbeResult(rid not in self.unready, "fake probe")
