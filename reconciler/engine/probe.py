"""Readiness probes: is a replica answering, as dstack checks it?

Why: only ready replicas are routed, and a rolling update stops an old replica only once its
replacement is ready. A plain service is ready when `GET /` answers with any status below 500
(it is up; what `/` returns is the service's business). A service with a mapped model is ready
when a one-token chat completion succeeds: `POST <prefix>/chat/completions` with `max_tokens: 1`
for `format: openai`, `POST /generate` with `max_new_tokens: 1` for `format: tgi` — a model
server that listens but has not loaded its weights is not ready.

A service with dstack `probes:` is probed with those instead (`probe_http`, `run_probes`): every
probe must answer 2xx, `ready_after` times in a row, one round per `interval` (the smallest of
its probes'), before the replica is routed; a READY replica whose probe fails is unrouted.

Addresses are "http://host:port" or "unix:///abs/path.sock" (the local backend's relay socket).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx

from reconciler.config.models import ProbeSpec
from tidegate.routes import ModelFormat, ModelRoute


@dataclass(frozen=True)
class ProbeResult:
    ready: bool
    detail: str = ""


Prober = Callable[[str, "ModelRoute | None", float], ProbeResult]


def _client(address: str, timeout: float) -> tuple[httpx.Client, str]:
    if address.startswith("unix://"):
        path = address[len("unix://") :]
        transport = httpx.HTTPTransport(uds=path)
        return httpx.Client(transport=transport, timeout=timeout), "http://replica"
    return httpx.Client(timeout=timeout), address.rstrip("/")


def probe_replica(address: str, model: ModelRoute | None, timeout: float = 2.0) -> ProbeResult:
    """One readiness check; never raises."""
    try:
        client, base = _client(address, timeout)
    except Exception as e:  # a malformed address is a failed probe, not a crash of the pass
        return ProbeResult(False, f"bad address {address!r}: {e}")
    try:
        with client:
            if model is None:
                r = client.get(base + "/")
                ok = r.status_code < 500
                return ProbeResult(ok, f"GET / -> {r.status_code}")
            if model.format is ModelFormat.TGI:
                r = client.post(
                    base + "/generate", json={"inputs": "hi", "parameters": {"max_new_tokens": 1}}
                )
                return ProbeResult(r.status_code < 400, f"POST /generate -> {r.status_code}")
            prefix = "/" + model.prefix.strip("/") if model.prefix.strip("/") else ""
            r = client.post(
                base + prefix + "/chat/completions",
                json={"model": model.served_name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
            )
            return ProbeResult(r.status_code < 400, f"POST {prefix}/chat/completions -> {r.status_code}")
    except httpx.HTTPError as e:
        return ProbeResult(False, f"{type(e).__name__}: {e}"[:200])


HttpProber = Callable[[str, ProbeSpec], ProbeResult]


def probe_http(address: str, probe: ProbeSpec) -> ProbeResult:
    """One dstack probe (`probes:` item): passes on a 2xx answer within its timeout; never raises."""
    what = f"{probe.method.upper()} {probe.url}"
    try:
        client, base = _client(address, float(probe.timeout))
    except Exception as e:  # a malformed address is a failed probe, not a crash of the pass
        return ProbeResult(False, f"bad address {address!r}: {e}")
    try:
        with client:
            r = client.request(
                probe.method.upper(),
                base + probe.url,
                headers=[(h.name, h.value) for h in probe.headers],
                content=probe.body.encode() if probe.body is not None else None,
            )
            return ProbeResult(200 <= r.status_code < 300, f"{what} -> {r.status_code}")
    except httpx.HTTPError as e:
        return ProbeResult(False, f"{what}: {type(e).__name__}: {e}"[:200])


def run_probes(address: str, probes: Sequence[ProbeSpec], http: HttpProber = probe_http) -> ProbeResult:
    """Every probe must pass; the detail of the first failure (or of the last pass)."""
    result = ProbeResult(True, "no probes")
    for probe in probes:
        try:
            result = http(address, probe)
        except Exception as e:  # an injected prober must never stop the pass
            result = ProbeResult(False, f"{type(e).__name__}: {e}"[:200])
        if not result.ready:
            return result
    return result
