"""Service config models (the `.dstack.yml` schema) and `.dstack/profiles.yml`; pure, no I/O."""

from __future__ import annotations

from .durations import format_duration, parse_duration
from .models import (
    ModelFormat,
    ModelSpec,
    PortMapping,
    ProfileParams,
    ReplicaRange,
    RetryEvent,
    RetrySpec,
    ScalingSpec,
    ServiceConfig,
    SpotPolicy,
)
from .resources import GpuSpec, IntRange, MemoryRange, ResourcesSpec

# What other units may import (docs/architecture.md, the public-surface rule); the rest is private.
PUBLIC_MODULES: tuple[str, ...] = ("diagnostics", "durations", "loader", "models", "resources", "schema", "yamldoc")

__all__ = [
    "GpuSpec",
    "IntRange",
    "MemoryRange",
    "ModelFormat",
    "ModelSpec",
    "PortMapping",
    "ProfileParams",
    "ReplicaRange",
    "ResourcesSpec",
    "RetryEvent",
    "RetrySpec",
    "ScalingSpec",
    "ServiceConfig",
    "SpotPolicy",
    "format_duration",
    "parse_duration",
]
