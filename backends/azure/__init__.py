"""The Azure backend (azure-mgmt-compute): the Backend (backend), ARM helpers and error classes
(arm), and the network setup (network).
"""

# What other units may import (docs/architecture.md, the public-surface rule); the rest is private.
PUBLIC_MODULES: tuple[str, ...] = ("backend", "catalog_refresh")
