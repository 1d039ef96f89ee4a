"""Backends: where replicas run. One module per backend behind the `Backend` protocol in `base`."""

# What other units may import (docs/architecture.md, the public-surface rule); the rest is private.
PUBLIC_MODULES: tuple[str, ...] = ("base", "gpu_names", "refresh", "registry", "settings", "workdir")
