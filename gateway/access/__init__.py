"""Who may pass: API tokens (stored as hashes) and the gateway's checks of them."""

from __future__ import annotations

from gateway.access.auth import Authenticator, MetricsAccess, metrics_need_token
from gateway.access.tokens import TokenError, TokenStore, create_token, load_records, revoke_token

__all__ = ["Authenticator", "MetricsAccess", "TokenError", "TokenStore", "create_token", "load_records", "metrics_need_token", "revoke_token"]
