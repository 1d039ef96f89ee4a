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
