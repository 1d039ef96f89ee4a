"""The contract every backend honours: values exchanged with the reconciler and the `Backend` protocol.

Why this module exists: the reconciler must be able to drive a process on this machine, an EC2
instance and an Azure VM the same way, and a crash anywhere must be recoverable by asking the
backend what it really has. So the protocol is small and every call is idempotent:

- `create(spec)` is keyed by the deterministic `spec.replica_id`; calling it twice for the same id
  returns the existing replica instead of starting a second one.
- `delete(replica_id)` treats "already gone" as success.
- `list_owned()` returns every replica carrying this installation's ownership mark, whether or not
  the caller remembers it (that is how orphans are found and adopted after a crash).

Which calls may be slow, and how progress is observed. The reconciler runs each service's backend
calls on a bounded pool of workers (reconciler.engine.workqueue); a call that holds a worker for a
VM's whole boot holds that worker's share of every other service. So:

- `create` and `delete` *start* an operation and return once the cloud accepted it: `create`
  answers PROVISIONING (RUNNING when it already runs) with the replica's `handle`; `delete`
  returns while the replica may still be TERMINATING. They never wait for a boot or a teardown to
  finish (a cloud's long-running operation is left running, not `.result()`-ed). They may still
  take a few API round trips: `CALL_BUDGET` is the wall time they are allowed.
- Progress is observed, not awaited: `describe` / `list_owned` report PROVISIONING -> RUNNING (or
  EXITED with a `message`), and TERMINATING -> None/GONE. The reconciler polls them on later
  passes; nothing else carries an operation across passes, so a crash loses nothing.
- `offers`, `describe`, `list_owned` and `logs` are reads, bounded by the SDK's own timeouts.

The contract suite (tests/backends/contract.py) times `create`/`delete` against `CALL_BUDGET` and
checks that `describe` shows the operation finish.

Backends never import the reconciler or the gateway (import-linter enforces it); they get plain
values from here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol, runtime_checkable

from tidegate.routes import TunnelRoute

# Wall time `create` / `delete` may hold their caller (see the module docstring): a few API calls,
# never a boot. The contract suite checks it with a backend's own test doubles.
CALL_BUDGET = 30.0


class BackendError(Exception):
    """Base of every error a backend raises."""


class TemporaryError(BackendError):
    """Retry later with backoff (throttling, 5xx, no capacity right now)."""

    def __init__(self, message: str, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentError(BackendError):
    """Will not succeed until the spec changes (bad image, unsupported Python, no offer at all)."""


class ReplicaStatus(StrEnum):
    PROVISIONING = "provisioning"  # asked for, not yet running (cloud boot, venv build)
    RUNNING = "running"  # process/instance is up; readiness is decided by the reconciler's probe
    EXITED = "exited"  # the process or instance stopped on its own (crash, spot interruption)
    TERMINATING = "terminating"
    GONE = "gone"


@dataclass(frozen=True)
class Range:
    """Inclusive numeric range; `None` means unbounded on that side."""

    min: float | None = None
    max: float | None = None

    def contains(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


@dataclass(frozen=True)
class GpuRequirement:
    """dstack's GPU grammar resolved: names (any of), memory per GPU in GB, count, vendor."""

    names: tuple[str, ...] = ()
    memory_gb: Range = Range()
    count: Range = Range(1, 1)
    vendor: str | None = None


@dataclass(frozen=True)
class Requirements:
    cpus: Range = Range(2, None)
    memory_gb: Range = Range(8, None)
    disk_gb: Range = Range(100, None)
    gpu: GpuRequirement | None = None
    spot_policy: str = "on-demand"  # spot | on-demand | auto
    max_price: float | None = None
    regions: tuple[str, ...] = ()
    instance_types: tuple[str, ...] = ()
    backends: tuple[str, ...] = ()


@dataclass(frozen=True)
class GpuInfo:
    name: str
    memory_gb: float
    count: int
    vendor: str = "nvidia"


@dataclass(frozen=True)
class Offer:
    """One way to run a replica: an instance type in a region at a price."""

    backend: str
    region: str
    instance_type: str
    cpus: int
    memory_gb: float
    gpu: GpuInfo | None
    spot: bool
    price: float  # USD per hour
    disk_gb: float = 0.0

    def resources_label(self) -> str:
        parts = [f"{self.cpus}xCPU", f"{self.memory_gb:g}GB"]
        if self.gpu is not None:
            parts.append(f"{self.gpu.count}x{self.gpu.name} ({self.gpu.memory_gb:g}GB)")
        return ", ".join(parts)


@dataclass(frozen=True)
class ReplicaSpec:
    """Everything a backend needs to start one replica. Built by the reconciler, never persisted
    with `env` values (those may be secrets)."""

    replica_id: str  # <service>-<spec-hash8>-<ordinal>, deterministic
    service: str
    spec_hash: str
    ordinal: int
    port: int  # the port the service listens on inside the replica
    commands: tuple[str, ...] = ()
    image: str | None = None
    python: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    requirements: Requirements = Requirements()
    offer: Offer | None = None
    # A directory holding the repository's files at the deployed revision (local backend copies
    # it; cloud backends may ship it in user data or ignore it when an image is given).
    workdir: str | None = None
    revision: str | None = None
    # True only for code committed to the deployed branch (SECURITY.md). An untrusted replica (a
    # PR preview) never runs outside the local sandbox and never gets an operator's egress rules.
    trusted: bool = False


@dataclass(frozen=True)
class ReplicaInfo:
    """What a backend reports about one replica it owns."""

    replica_id: str
    backend: str
    status: ReplicaStatus
    # Where the service answers: "http://host:port" or "unix:///abs/path.sock".
    address: str | None = None
    handle: str | None = None  # backend's own id: pid:starttime, instance id, VM name
    service: str | None = None
    spec_hash: str | None = None
    started_at: float | None = None
    message: str | None = None  # last error / exit reason, shown by `tidegate ps`
    offer: Offer | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    # A cloud replica reached through an SSH tunnel: where that tunnel goes (public facts only), so
    # a gateway on another machine can open its own.
    tunnel: TunnelRoute | None = None


@runtime_checkable
class Backend(Protocol):
    """What the reconciler calls. Every method is safe to call again after a crash.

    Every member is required: what differs between backends is answered by a member (a flag, or
    a method that returns None / an empty list where a backend has nothing to say), never by
    probing for an attribute, so a fake in a test is held to the same surface as the real ones."""

    name: str
    # True when `create()` runs the replica in a copy of `spec.workdir` (the local backend): the
    # checkout's files are then part of what runs, so their hash is part of the spec hash and a
    # code push rolls the replicas. False for a backend that runs the image and commands only (the
    # clouds): a code push must not replace a GPU instance for nothing.
    ships_workdir: bool

    def offers(self, requirements: Requirements) -> Sequence[Offer]:
        """Offers matching the requirements, cheapest first. Empty when this backend cannot run it."""
        ...

    def can_run(self, spec: ReplicaSpec) -> str | None:
        """None when the spec can run here, else the reason shown as the service's blocked reason:
        what `Requirements` do not capture (the local backend: an image without a container
        engine, a missing Python). The clouds screen nothing beyond their offers."""
        ...

    def create(self, spec: ReplicaSpec) -> ReplicaInfo:
        """Start the replica, or return the one already started for `spec.replica_id`. Returns once
        the start is accepted (PROVISIONING), not when the replica runs: `describe` shows that."""
        ...

    def describe(self, replica_id: str) -> ReplicaInfo | None:
        """The replica's current state, or None when this backend has no such replica."""
        ...

    def list_owned(self) -> Sequence[ReplicaInfo]:
        """Every replica carrying this installation's ownership mark."""
        ...

    def delete(self, replica_id: str) -> None:
        """Stop the replica and free what was created with it. Already gone counts as success.
        Returns once the deletion is under way; `describe` shows it finish (None or GONE)."""
        ...

    def logs(self, replica_id: str, lines: int = 100) -> list[str]:
        """The last lines the replica wrote (best effort; empty when not available)."""
        ...

    def log_path(self, replica_id: str) -> Path | None:
        """The file on this machine the replica's output goes to, so `tidegate logs --follow` reads
        it by byte offset; None when the backend keeps no such file (`logs()` is polled instead)."""
        ...

    def collect_garbage(self) -> list[Path]:
        """Remove the files this backend left behind that belong to nothing live; what was removed."""
        ...

    def close(self) -> None:
        """Release what the backend holds in this process (a cloud backend's SSH tunnels)."""
        ...


class BackendRegistry:
    """Explicit name -> backend mapping, built once at the entry point."""

    def __init__(self, backends: Mapping[str, Backend] | None = None) -> None:
        self._backends: dict[str, Backend] = dict(backends or {})

    def register(self, backend: Backend) -> None:
        self._backends[backend.name] = backend

    def get(self, name: str) -> Backend:
        try:
            return self._backends[name]
        except KeyError as e:
            raise PermanentError(f"backend {name!r} is not configured (have: {', '.join(self.names())})") from e

    def names(self) -> list[str]:
        return sorted(self._backends)

    def all(self) -> list[Backend]:
        return [self._backends[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._backends

    def ships_workdir(self, name: str) -> bool:
        """Whether the backend `name` runs replicas in a copy of the checkout (`Backend.ships_workdir`).
        False for a backend not configured here: the offline catalog prices only the clouds."""
        backend = self._backends.get(name)
        return backend is not None and backend.ships_workdir

    def close(self) -> None:
        """Release what backends hold in this process (a cloud backend's SSH tunnels)."""
        for backend in self._backends.values():
            backend.close()


def owner_tags(owner: str, spec: ReplicaSpec) -> dict[str, str]:
    """The ownership tags every cloud resource carries (DESIGN.md, names and ownership)."""
    return {
        "tidegate:owner": owner,
        "tidegate:service": spec.service,
        "tidegate:replica": spec.replica_id,
        "tidegate:spec": spec.spec_hash,
        "Name": spec.replica_id,
    }
