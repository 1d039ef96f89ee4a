"""Request statistics: per-service counters and rate windows (published for the autoscaler) and Prometheus."""

from __future__ import annotations

from gateway.stats.counters import ServiceStats, Stats
from gateway.stats.metrics import MULTIPROC_ENV, metrics_response

# What other units may import (docs/architecture.md, the public-surface rule); the rest is private.
PUBLIC_MODULES: tuple[str, ...] = ("counters", "metrics")

__all__ = ["MULTIPROC_ENV", "ServiceStats", "Stats", "metrics_response"]
