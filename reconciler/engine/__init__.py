"""One reconcile pass: desired state -> observe -> plan -> apply, with probes, liveness,
autoscaling, routing targets, and the loop and schedule that run passes.

Pure cores: plan, autoscale, naming. Everything else does the I/O around them.
"""

# What other units may import (docs/architecture.md, the public-surface rule); the rest is private.
PUBLIC_MODULES: tuple[str, ...] = (
    "desired",
    "housekeeping",
    "loop",
    "persist",
    "plan",
    "reconcile",
    "stats",
    "values",
)
