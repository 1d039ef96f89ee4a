"""The control API's wire shapes: frozen dataclasses Litestar serialises (msgspec) and documents in OpenAPI."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ServiceSummary:
    name: str
    status: str
    reason: str
    revision: str | None
    commit_subject: str | None
    ready: int
    desired: int
    url: str | None
    model: str | None
    cost_per_hour: float
    rps: float
    backends: list[str]
    stopped: bool
    preview_pr: int | None = None
    diagnostics: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ReplicaOut:
    id: str
    ordinal: int
    backend: str
    phase: str
    current: bool
    address: str | None
    offer: str | None
    price: float | None
    age_seconds: float | None
    attempts: int
    error: str | None
    probe_failures: int


@dataclass(frozen=True)
class ScalingOut:
    at: float
    previous: int
    count: int
    reason: str


@dataclass(frozen=True)
class EventOut:
    at: float
    event: str
    detail: str


@dataclass(frozen=True)
class DeployOut:
    at: float
    revision: str | None
    subject: str | None
    author: str | None
    outcome: str
    diff: list[str]


@dataclass(frozen=True)
class SamplePoint:
    at: float
    rps: float
    ready: int


@dataclass(frozen=True)
class ServiceDetail:
    service: ServiceSummary
    replicas: list[ReplicaOut]
    scaling: list[ScalingOut]
    scaling_now: str | None
    scaling_pending: str | None
    deploys: list[DeployOut]
    plan_diff: list[str] | None
    spec: dict[str, str]
    history: list[EventOut]
    series: list[SamplePoint]


@dataclass(frozen=True)
class PreviewOut:
    name: str
    pr: int | None
    head_sha: str | None
    expires_at: float | None
    url: str | None
    pr_url: str | None
    note: str


@dataclass(frozen=True)
class RejectedOut:
    pr: int | None
    reason: str
    service: str | None
    detail: str


@dataclass(frozen=True)
class Previews:
    previews: list[PreviewOut]
    rejected: list[RejectedOut]


@dataclass(frozen=True)
class ValidationOut:
    """A problem in a config file of the deployed revision, as `tidegate validate` reports it."""

    path: str
    line: int
    column: int
    field: str
    message: str
    severity: str


@dataclass(frozen=True)
class Overview:
    source: str | None
    revision: str | None
    source_error: str | None
    cost_per_hour: float
    services: list[ServiceSummary]
    previews: Previews
    validation: list[ValidationOut] = field(default_factory=list)


@dataclass(frozen=True)
class OfferOut:
    backend: str
    region: str
    instance_type: str
    cpus: int
    memory_gb: float
    gpu: str | None
    spot: bool
    price: float


@dataclass(frozen=True)
class TokenOut:
    name: str
    prefix: str
    scope: str
    created_at: float


@dataclass(frozen=True)
class TokenCreate:
    name: str
    admin: bool = False


@dataclass(frozen=True)
class TokenCreated:
    name: str
    scope: str
    token: str  # shown only in this response; the state directory keeps its hash


@dataclass(frozen=True)
class LogLines:
    service: str
    replica: str
    lines: list[str]


@dataclass(frozen=True)
class ActionResult:
    action: str
    service: str | None
    detail: str


@dataclass(frozen=True)
class ErrorBody:
    code: str
    message: str


@dataclass(frozen=True)
class ErrorOut:
    error: ErrorBody
