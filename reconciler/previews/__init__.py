"""Pull-request previews: the pure decision (decision), pull-request facts from GitHub (github),
PR refs checked out as sources (pr_source), and their wiring into the engine and the loop.
"""

# What other units may import (docs/architecture.md, the public-surface rule); the rest is private.
PUBLIC_MODULES: tuple[str, ...] = ("github", "loop", "pr_source", "wiring")
