"""`GET /metrics`: Prometheus text, summed over workers when the gateway runs several."""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess

from gateway.asgi import Send, send_bytes

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


async def metrics_response(send: Send) -> None:
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        body = generate_latest(registry)
    else:
        body = generate_latest(REGISTRY)
    await send_bytes(send, 200, body, CONTENT_TYPE_LATEST.encode())
