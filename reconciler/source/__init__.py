"""Where desired state comes from: a git branch or a watched local tree (checkout), and the
content hashes of the code a service runs (code_files).
"""

# What other units may import (docs/architecture.md, the public-surface rule); the rest is private.
PUBLIC_MODULES: tuple[str, ...] = ("checkout", "code_files")
