"""Webhooks that wake the reconciler (`POST /hooks/github`, `POST /hooks/git`), replays ignored."""

# What other units may import (docs/architecture.md, the public-surface rule); the rest is private.
PUBLIC_MODULES: tuple[str, ...] = ("deliveries", "handler")
