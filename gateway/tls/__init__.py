"""HTTPS on the gateway: certificates from files or ACME, picked per host by SNI, reloaded live."""

# What other units may import (docs/architecture.md, the public-surface rule); the rest is private.
PUBLIC_MODULES: tuple[str, ...] = ("certs", "challenges", "listener", "workers")
