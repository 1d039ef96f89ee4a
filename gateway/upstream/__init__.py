"""Talking to replicas: the HTTP/1.1 client and its response parser, relaying answers to clients, WebSockets.

`client` keeps keep-alive pools per replica URL; `response` parses and bounds what a replica
sends; `relay` turns a replica's answer into ASGI messages (and header rules both ways);
`websocket` proxies WebSockets through aiohttp.
"""

from __future__ import annotations

from gateway.upstream.client import HostPool, UpstreamClient
from gateway.upstream.relay import (
    relay_response,
    relay_websocket,
    request_head,
    request_headers,
    upstream_failure,
)
from gateway.upstream.response import Response
from gateway.upstream.websocket import UpstreamPool

# What other units may import (docs/architecture.md, the public-surface rule); the rest is private.
PUBLIC_MODULES: tuple[str, ...] = ("client", "relay", "response", "websocket")

__all__ = [
    "HostPool", "Response", "UpstreamClient", "UpstreamPool", "relay_response", "relay_websocket", "request_head",
    "request_headers", "upstream_failure",
]
