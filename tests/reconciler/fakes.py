"""A recording in-memory Backend for engine tests and the reconcile benchmark.

It honours the Backend contract the way a real one must (idempotent create by replica id, delete
of a missing replica is fine, list_owned returns everything it holds) and records every call, so
tests can assert "nothing was started twice". Faults are injected per replica id or service.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from backends.base import BackendError, Offer, ReplicaInfo, ReplicaSpec, ReplicaStatus, Requirements
from reconciler.engine.probe import ProbeResult
from tidegate.routes import ModelRoute


@dataclass
class FakeBackend:
    name: str = "local"
    ships_workdir: bool = True  # like the local backend it stands in for
    clock_value: float = 0.0
    replicas: dict[str, ReplicaInfo] = field(default_factory=dict)
    specs: dict[str, ReplicaSpec] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    create_errors: dict[str, BackendError] = field(default_factory=dict)  # service or replica id -> error
    delete_errors: dict[str, BackendError] = field(default_factory=dict)
    no_offers: bool = False

    def offers(self, requirements: Requirements) -> Sequence[Offer]:
        self.calls.append(("offers", ""))
        if self.no_offers:
            return []
        return [Offer(self.name, "local", "host", cpus=2, memory_gb=8, gpu=None, spot=False, price=0.0)]

    def can_run(self, spec: ReplicaSpec) -> str | None:
        return None

    def create(self, spec: ReplicaSpec) -> ReplicaInfo:
        self.calls.append(("create", spec.replica_id))
        err = self.create_errors.get(spec.replica_id) or self.create_errors.get(spec.service)
        if err is not None:
            raise err
        existing = self.replicas.get(spec.replica_id)
        if existing is not None and existing.status is ReplicaStatus.RUNNING:
            return existing
        info = ReplicaInfo(
            replica_id=spec.replica_id,
            backend=self.name,
            status=ReplicaStatus.RUNNING,
            address=f"http://fake/{spec.replica_id}",
            handle=f"h-{spec.replica_id}",
            service=spec.service,
            spec_hash=spec.spec_hash,
            started_at=self.clock_value,
        )
        self.replicas[spec.replica_id] = info
        self.specs[spec.replica_id] = spec
        return info

    def describe(self, replica_id: str) -> ReplicaInfo | None:
        return self.replicas.get(replica_id)

    def list_owned(self) -> Sequence[ReplicaInfo]:
        self.calls.append(("list_owned", ""))
        return list(self.replicas.values())

    def delete(self, replica_id: str) -> None:
        self.calls.append(("delete", replica_id))
        err = self.delete_errors.get(replica_id)
        if err is not None:
            raise err
        self.replicas.pop(replica_id, None)
        self.specs.pop(replica_id, None)

    def logs(self, replica_id: str, lines: int = 100) -> list[str]:
        return [f"{replica_id}: boom"][-lines:]

    def log_path(self, replica_id: str) -> Path | None:
        return None

    def collect_garbage(self) -> list[Path]:
        return []

    def close(self) -> None:
        pass

    # -- test helpers -------------------------------------------------------------------------
    def crash(self, replica_id: str, message: str = "exit code 1") -> None:
        self.replicas[replica_id] = replace(
            self.replicas[replica_id], status=ReplicaStatus.EXITED, message=message
        )

    def creates(self) -> list[str]:
        return [rid for op, rid in self.calls if op == "create"]

    def deletes(self) -> list[str]:
        return [rid for op, rid in self.calls if op == "delete"]

    def running(self, service: str | None = None) -> list[str]:
        return sorted(
            rid
            for rid, i in self.replicas.items()
            if i.status is ReplicaStatus.RUNNING and (service is None or i.service == service)
        )


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
