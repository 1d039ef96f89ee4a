"""Where desired state comes from: a git branch or a watched local tree (checkout), the file
trees both work on (trees: walk, hash, copy, safe extraction), and the content hashes of the code
a service runs (code_files).
"""

# What other units may import (docs/architecture.md, the public-surface rule); the rest is private.
PUBLIC_MODULES: tuple[str, ...] = ("checkout", "code_files")
