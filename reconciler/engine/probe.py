"""Readiness and liveness probes: is a replica answering, as dstack checks it? Bounded, always.

Why: only ready replicas are routed, and a rolling update stops an old replica only once its
replacement is ready. A plain service is ready when `GET /` answers with any status below 500
(it is up; what `/` returns is the service's business). A service with a mapped model is ready
when a one-token chat completion succeeds: `POST <prefix>/chat/completions` with `max_tokens: 1`
for `format: openai`, `POST /generate` with `max_new_tokens: 1` for `format: tgi` — a model
server that listens but has not loaded its weights is not ready.

A service with dstack `probes:` is probed with those instead (`probe_http`, `run_probes`): every
probe must answer 2xx, `ready_after` times in a row, one round per `interval` (the smallest of
its probes'), before the replica is routed; a READY replica whose probe fails is unrouted.

Liveness (reconciler.engine.liveness) asks less: `probe_alive` is a cheap `GET /` that passes on
any status below 500 — never a generation, which a saturated model server answers slowly.

Every probe is bounded: it reads the status line and headers, never the body (a `/` that streams
forever, or a server that trickles its headers a byte at a time, must not hold a pass), and the
whole exchange — connect, send, headers — runs under one hard deadline (`asyncio.timeout`, which
cancels the read; httpx's own timeouts are per socket operation and a trickle resets them).
`fan_out` runs a pass's probes at once on a bounded pool, so n slow replicas cost one deadline,
not n.

Addresses are "http://host:port" or "unix:///abs/path.sock" (the local backend's relay socket).
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, TypeVar

from reconciler.config.models import ProbeSpec
from tidegate.routes import ModelFormat, ModelRoute

if TYPE_CHECKING:
    import httpx  # imported by the first probe: `tidegate plan` / `validate` never probe (~0.13 s)

# Probes of one pass run at most this many at a time (threads; each probe is one short exchange).
FAN_OUT = 16
T = TypeVar("T")


@dataclass(frozen=True)
class ProbeResult:
    ready: bool
    detail: str = ""


Prober = Callable[[str, "ModelRoute | None", float], ProbeResult]


@functools.cache
def _tls() -> ssl.SSLContext:
    import httpx

    # Built once: loading the CA bundle costs 100+ ms, more than a probe of a local replica.
    return httpx.create_ssl_context()


def _split(address: str) -> tuple[httpx.AsyncBaseTransport, str]:
    import httpx

    # Plain HTTP needs no CA bundle (verify=False builds a bare context; nothing is verified
    # because nothing is encrypted); only an https:// replica gets the shared default context.
    if address.startswith("unix://"):
        return httpx.AsyncHTTPTransport(uds=address[len("unix://") :], verify=False), "http://replica"
    if address.startswith("http://"):
        return httpx.AsyncHTTPTransport(verify=False), address.rstrip("/")
    if address.startswith("https://"):
        return httpx.AsyncHTTPTransport(verify=_tls()), address.rstrip("/")
    raise ValueError("not an http:// or unix:// address")


async def _status(
    address: str, method: str, path: str, deadline: float, json: object = None,
    headers: Sequence[tuple[str, str]] = (), content: bytes | None = None,
) -> int:
    """The status of one request; the body is never read. Raises TimeoutError past `deadline`."""
    import httpx

    transport, base = _split(address)
    # trust_env off: a replica is probed directly, never through a proxy from the environment.
    client = httpx.AsyncClient(transport=transport, timeout=deadline, trust_env=False)
    async with asyncio.timeout(deadline), client:
        request = client.build_request(method, base + path, json=json, headers=list(headers), content=content)
        response = await client.send(request, stream=True)
        await response.aclose()  # the status line is the answer; the connection is dropped
        return response.status_code


def request_status(
    address: str, method: str, path: str, deadline: float, json: object = None,
    headers: Sequence[tuple[str, str]] = (), content: bytes | None = None,
) -> int:
    """`_status` from synchronous code (a pass, or a probe thread of `fan_out`)."""
    coro = _status(address, method, path, deadline, json, headers, content)
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # the usual case: no event loop in this thread
        return asyncio.run(coro)
    with ThreadPoolExecutor(max_workers=1) as pool:  # called from async code: asyncio.run cannot nest
        return pool.submit(asyncio.run, coro).result()


def _errors() -> tuple[type[BaseException], ...]:
    """What a probe's request may raise (evaluated only when one did, so httpx is loaded)."""
    import httpx

    return (httpx.HTTPError, TimeoutError, ValueError, OSError)


def _failure(what: str, e: BaseException, deadline: float) -> ProbeResult:
    if isinstance(e, TimeoutError):
        return ProbeResult(False, f"{what}: no answer within {deadline:g}s")
    return ProbeResult(False, f"{what}: {type(e).__name__}: {e}"[:200])


def probe_replica(address: str, model: ModelRoute | None, timeout: float = 2.0) -> ProbeResult:
    """One readiness check; never raises."""
    body: dict[str, object] | None
    if model is None:
        what, method, path, body = "GET /", "GET", "/", None
    elif model.format is ModelFormat.TGI:
        what, method, path = "POST /generate", "POST", "/generate"
        body = {"inputs": "hi", "parameters": {"max_new_tokens": 1}}
    else:
        prefix = "/" + model.prefix.strip("/") if model.prefix.strip("/") else ""
        what, method, path = f"POST {prefix}/chat/completions", "POST", prefix + "/chat/completions"
        body = {"model": model.served_name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    try:
        status = request_status(address, method, path, timeout, json=body)
    except _errors() as e:
        return _failure(what, e, timeout)
    ok = status < 500 if model is None else status < 400
    return ProbeResult(ok, f"{what} -> {status}")


def probe_alive(address: str, model: ModelRoute | None, timeout: float = 2.0) -> ProbeResult:
    """One liveness check: `GET /` answers below 500 (the model is not asked to generate). Never raises."""
    try:
        status = request_status(address, "GET", "/", timeout)
    except _errors() as e:
        return _failure("GET /", e, timeout)
    return ProbeResult(status < 500, f"GET / -> {status}")


HttpProber = Callable[[str, ProbeSpec], ProbeResult]


def probe_http(address: str, probe: ProbeSpec) -> ProbeResult:
    """One dstack probe (`probes:` item): passes on a 2xx answer within its timeout; never raises."""
    what = f"{probe.method.upper()} {probe.url}"
    deadline = float(probe.timeout)
    try:
        status = request_status(
            address, probe.method.upper(), probe.url, deadline,
            headers=[(h.name, h.value) for h in probe.headers],
            content=probe.body.encode() if probe.body is not None else None,
        )
    except _errors() as e:
        return _failure(what, e, deadline)
    return ProbeResult(200 <= status < 300, f"{what} -> {status}")


def run_probes(address: str, probes: Sequence[ProbeSpec], http: HttpProber = probe_http) -> ProbeResult:
    """Every probe must pass; the detail of the first failure (or of the last pass)."""
    result = ProbeResult(True, "no probes")
    for probe in probes:
        result = guarded(partial(http, address, probe))
        if not result.ready:
            return result
    return result


def guarded(call: Callable[[], ProbeResult]) -> ProbeResult:
    """An injected prober must never stop the pass: what it raises is a failed probe."""
    try:
        return call()
    except Exception as e:
        return ProbeResult(False, f"{type(e).__name__}: {e}"[:200])


def fan_out(calls: Sequence[Callable[[], T]], workers: int = FAN_OUT) -> list[T]:
    """Run `calls` at most `workers` at a time; results in the order of `calls`. One call (the
    common pass) runs inline: no thread to start."""
    if len(calls) <= 1 or workers <= 1:
        return [c() for c in calls]
    with ThreadPoolExecutor(max_workers=min(workers, len(calls)), thread_name_prefix="tidegate-probe") as pool:
        return list(pool.map(lambda c: c(), calls))
