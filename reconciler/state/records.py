"""The persisted state document: services, their replicas, history and scaling decisions.

Why a module of its own: `plan` (pure) reads these records and `state` (I/O) stores them; keeping
the shapes here lets the pure code import them without touching the filesystem layer.

These are pydantic models and deliberately mutable: the engine edits one document during a pass
and the store writes it whole. Nothing here holds a secret value: env is kept as names only, and
the spec hash covers a salted hash of the values (so a secret change rolls replicas) never the
values themselves; a replica records the names and salted hashes of the secrets it received.
Text from outside (`last_error`, history details) is masked before it is stored here
(reconciler.state.redact): a record is serialised as it is, never rewritten as text.

Service and replica records carry a version (`version()`), a number never used twice in a
process: a new one when the record is made and on every field assignment, `note` and
`record_scaling`. The engine compares versions to know which services changed since a pass
(reconciler.engine.settled), so a record is edited by assigning its fields (a list or dict field is
replaced, not edited in place) or through its methods; `replicas` is the exception: the engine
compares its replicas one by one, so removing one from the list in place is seen too.
"""

from __future__ import annotations

import itertools
from enum import StrEnum
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from backends.base import Offer
from reconciler.config.models import ProbeSpec
from tidegate.routes import ModelRoute, RateLimit, TunnelRoute

SCHEMA_VERSION = 1
HISTORY_LIMIT = 50
SCALING_LIMIT = 20


class ReplicaPhase(StrEnum):
    PROVISIONING = "provisioning"  # created; not yet passing the readiness probe
    READY = "ready"  # probe passed; routed
    FAILED = "failed"  # exited / gone / never became ready; restarted with backoff
    DRAINING = "draining"  # out of the routes; removed after the drain grace


class ServiceStatus(StrEnum):
    PENDING = "pending"  # no replica ready yet
    RUNNING = "running"  # all desired replicas ready
    UPDATING = "updating"  # rolling / scaling in progress
    DEGRADED = "degraded"  # fewer ready than desired, failures waiting on backoff
    STOPPED = "stopped"  # `tidegate stop`
    BLOCKED = "blocked"  # missing env, no backend offers it: nothing deployed for this spec
    STALLED = "stalled"  # permanent error: waits for the config to change
    KEPT = "kept"  # its config file fails validation: left running at the last good revision
    SCALED_TO_ZERO = "scaled-to-zero"


def offer_label(offer: Offer) -> str:
    kind = "spot" if offer.spot else "on-demand"
    return f"{offer.backend} {offer.region} {offer.instance_type} {kind}"


def offer_fields(offer: Offer | None) -> dict[str, Any]:
    """ReplicaRecord's `offer`/`price` for the offer a replica was created on (none: free/local)."""
    if offer is None or offer.price <= 0:
        return {}
    return {"offer": offer_label(offer), "price": offer.price}


_VERSIONS = itertools.count(1)  # next() is atomic under the GIL: workers edit records too


class Versioned(BaseModel):
    """A model whose `version()` changes on every field assignment (and is unique per process)."""

    _version: int = PrivateAttr(default_factory=lambda: next(_VERSIONS))

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        self._bump()

    def _bump(self) -> None:
        private = self.__pydantic_private__
        if private is not None:
            private["_version"] = next(_VERSIONS)

    def version(self) -> int:
        private = self.__pydantic_private__
        return int(private["_version"]) if private is not None else 0

    def __eq__(self, other: object) -> bool:
        """Equal fields (the version is bookkeeping, not content: pydantic would compare it)."""
        if not isinstance(other, BaseModel):
            return NotImplemented
        return (
            type(self) is type(other)
            and self.__dict__ == other.__dict__
            and self.__pydantic_extra__ == other.__pydantic_extra__
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, like any pydantic model

    # A copy is another record (`model_copy(update=...)` may even differ): a version of its own.
    def __copy__(self) -> Self:
        made = super().__copy__()
        made._bump()
        return made

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Self:
        made = super().__deepcopy__(memo)
        made._bump()
        return made


class ReplicaRecord(Versioned):
    model_config = ConfigDict(extra="ignore")

    id: str
    service: str
    spec_hash: str
    ordinal: int
    backend: str
    phase: ReplicaPhase = ReplicaPhase.PROVISIONING
    handle: str | None = None
    address: str | None = None
    backend_status: str | None = None
    created_at: float | None = None
    started_at: float | None = None
    ready_at: float | None = None
    attempts: int = 0  # consecutive failed starts; resets when ready
    last_error: str | None = None
    next_attempt_at: float | None = None  # FAILED: not restarted before this time
    draining_since: float | None = None
    # READY only: liveness probes failed in a row (reconciler.engine.liveness). Above 0 it is out of the
    # routes; at the threshold it becomes FAILED. Changes only when a probe's outcome does.
    probe_failures: int = 0
    # PROVISIONING with dstack `probes`: passes in a row so far (routed at `ready_after`), and
    # when the last probe ran (in memory only: probes are paced by their `interval`).
    probe_passes: int = 0
    probed_at: float | None = Field(default=None, exclude=True)
    # The cloud offer the replica runs on (label + USD/hour), for `ps` cost; None on free backends.
    offer: str | None = None
    price: float | None = None
    # The host a machine-bound replica runs on (the local backend's: only that machine reaches it).
    machine: str | None = None
    # A cloud replica's SSH tunnel target (public facts only): gateways on other machines open
    # their own tunnel with it (tidegate.routes.TunnelRoute).
    tunnel: TunnelRoute | None = None
    # Bare-KEY secrets this replica received: name -> salted hash (reconciler.state.redact), never the
    # value. Whoever shows the replica's output masks exactly these values in it.
    secrets: dict[str, str] = Field(default_factory=dict)
    # Last seen from gateway stats (picks the replica to remove); not persisted: it changes
    # with traffic and must not cause a state write every pass.
    in_flight: int = Field(default=0, exclude=True)


class HistoryEntry(BaseModel):
    model_config = ConfigDict(extra="ignore")

    at: float
    event: str
    detail: str = ""


class ScalingRecord(BaseModel):
    model_config = ConfigDict(extra="ignore")

    at: float
    previous: int
    count: int
    reason: str


class RouteInfo(BaseModel):
    """What the gateway needs from the config, kept so a service whose file broke stays routed."""

    model_config = ConfigDict(extra="ignore")

    host: str
    auth: bool = True
    model: ModelRoute | None = None
    min_replicas: int = 1
    max_replicas: int = 1
    probes: tuple[ProbeSpec, ...] = ()  # dstack `probes`; empty: tidegate's built-in readiness probe
    rate_limits: tuple[RateLimit, ...] = ()


class ServiceRecord(Versioned):
    model_config = ConfigDict(extra="ignore")

    name: str
    spec_hash: str
    revision: str | None = None
    config_path: str | None = None
    backend: str | None = None
    env_names: list[str] = Field(default_factory=list)
    # Non-secret view of the spec (image, commands, port, resources, env names…) for plan diffs.
    spec_summary: dict[str, str] = Field(default_factory=dict)
    status: ServiceStatus = ServiceStatus.PENDING
    reason: str = ""
    desired_count: int = 0
    replicas: list[ReplicaRecord] = Field(default_factory=list)
    route: RouteInfo | None = None
    stopped: bool = False
    stopped_spec: str | None = None  # the spec when stopped (kept for history; `start` alone resumes)
    # Its config was removed: since then out of the routes (withdrawn), its replicas draining
    # until the engine stops them (engine.plan's UNROUTE_SERVICE, then DELETE_SERVICE).
    unrouted_at: float | None = None
    # The problems of its config file at the current revision (`path:line:col: field: message`),
    # while that file has errors; shown by `ps`. Empty when the file is fine.
    diagnostics: list[str] = Field(default_factory=list)
    stalled_spec: str | None = None  # permanent error for this spec hash
    backoff_until: float | None = None  # service-level backoff after temporary errors
    failures: int = 0
    last_scaled_at: float | None = None
    scaling_wanted: int | None = None  # a change the autoscaler wants but a delay holds back
    panic_since: float | None = None  # autoscaler panic mode (reconciler.engine.autoscale)
    scaling: list[ScalingRecord] = Field(default_factory=list)
    history: list[HistoryEntry] = Field(default_factory=list)

    def note(self, at: float, event: str, detail: str = "") -> None:
        self.history.append(HistoryEntry(at=at, event=event, detail=detail))
        del self.history[:-HISTORY_LIMIT]
        self._bump()

    def record_scaling(self, rec: ScalingRecord) -> None:
        self.scaling.append(rec)
        del self.scaling[:-SCALING_LIMIT]
        self._bump()

    def replica(self, rid: str) -> ReplicaRecord | None:
        return next((r for r in self.replicas if r.id == rid), None)


Versions = tuple[int, ...]


def versions(rec: ServiceRecord) -> Versions:
    """The versions of `rec` and of its replicas, in order. Versions are never reused in a process
    and change on every assignment, `note` and `record_scaling`, so equal tuples mean the very
    same objects, unedited: equal records, equal JSON. Fields left out of the JSON (`in_flight`,
    `probed_at`) count too. The engine's settled-service fingerprint and state.json's kept record
    texts (reconciler.state.doc_json) both key by it."""
    # `version()` inlined: this runs for every service on every pass.
    replicas = rec.replicas
    if len(replicas) == 1:  # the common case, without a list to build
        return (rec.__pydantic_private__["_version"], replicas[0].__pydantic_private__["_version"])  # type: ignore[index]
    return (rec.__pydantic_private__["_version"], *[r.__pydantic_private__["_version"] for r in replicas])  # type: ignore[index]


class SnapshotRef(BaseModel):
    model_config = ConfigDict(extra="ignore")

    revision: str
    root: str
    config_path: str | None = None
    # The loader's diagnostics at this revision (`path:line:col: message`), for `ps`: a file that
    # cannot be deployed must say why even when no service of it was ever running.
    diagnostics: list[str] = Field(default_factory=list)


class StateDoc(BaseModel):
    model_config = ConfigDict(extra="ignore")

    schema_version: int = SCHEMA_VERSION
    serial: int = 0
    lineage: str = ""
    journal_seq: int = 0  # last journal entry whose effect this document reflects
    updated_at: float | None = None
    last_snapshot: SnapshotRef | None = None
    services: dict[str, ServiceRecord] = Field(default_factory=dict)
