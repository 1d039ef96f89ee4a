"""The gateway: host routing, auth, streaming proxy and the OpenAI-compatible API over replicas."""

# What other units may import (docs/architecture.md, the public-surface rule); the rest is private.
PUBLIC_MODULES: tuple[str, ...] = ("cli", "etcd_cli", "etcd_feed", "options", "ratelimit_settings", "server", "settings")
