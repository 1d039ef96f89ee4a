"""What the cloud backends share: the members both answer alike, with the tunnel, describe and
launch shape (backend: `CloudBackend`), tags, offers and the capacity loop (common), the offer
catalog (catalog, with its shipped data/), the orphan sweeper (orphans), the VM startup script
(startup) and the SSH tunnels to replicas (tunnels; ssh_tunnel, ssh_keys, tunnel_userdata).
"""

# What other units may import (docs/architecture.md, the public-surface rule); the rest is private.
PUBLIC_MODULES: tuple[str, ...] = ("backend", "catalog", "common", "orphans", "tunnels")
