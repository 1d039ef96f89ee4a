"""Who may pass: API tokens (stored as hashes) and the gateway's checks of them."""

from __future__ import annotations

from gateway.access.auth import Authenticator, MetricsAccess, metrics_need_token
from gateway.access.tokens import TokenError, TokenStore, create_token, load_records, revoke_token

# What other units may import (docs/architecture.md, the public-surface rule); the rest is private.
PUBLIC_MODULES: tuple[str, ...] = ("auth", "tokens")

__all__ = ["Authenticator", "MetricsAccess", "TokenError", "TokenStore", "create_token", "load_records", "metrics_need_token", "revoke_token"]
