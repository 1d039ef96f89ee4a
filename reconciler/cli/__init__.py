"""The `tidegate` command: argument parsing (main), the subcommands, settings built once at the
entry point, the runtime that assembles a running reconciler, and `make up`'s quickstart.
"""

# What other units may import (docs/architecture.md, the public-surface rule); the rest is private.
PUBLIC_MODULES: tuple[str, ...] = ("main",)
