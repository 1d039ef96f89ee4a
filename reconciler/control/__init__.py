"""The control API (`/api/v1`) and the dashboard (`/ui/`): a Litestar app `tidegate up` mounts into the gateway.

Why here: what it shows is the reconciler's state (services, replicas, decisions, previews), which
the gateway must not import; the reconciler's CLI wiring builds this app and hands it to the gateway
as an opaque ASGI callable for the `/api/` and `/ui/` prefixes, so the proxy's hot path is untouched.
"""

# What other units may import (docs/architecture.md, the public-surface rule); the rest is private.
PUBLIC_MODULES: tuple[str, ...] = ("app", "auth", "commits", "plane", "shared", "tail")
