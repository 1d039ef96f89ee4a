"""The control plane: configs in git -> desired state -> plan -> apply through backends."""

# What other units may import (docs/architecture.md, the public-surface rule); the rest is private.
PUBLIC_MODULES: tuple[str, ...] = ()
