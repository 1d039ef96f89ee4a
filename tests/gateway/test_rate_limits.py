"""Rate limits against a real gateway and a real upstream: dstack's per-service `rate_limits`
(per client address, per header value, longest prefix), per-token limits from the settings
file, one table shared by the workers of `tidegate gateway --workers 2`, and stopped services."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from gateway.access.tokens import create_token
from gateway.ratelimit_settings import TokenLimitsError, read_token_limits
from tests.gateway.conftest import ROOT, RunningGateway, snapshot_of, wait_for
from tests.gateway.conftest import Upstream as Proc
from tidegate.routes import RateLimit, RateLimitKey, RoutesSnapshot, ServiceRoute, Upstream
from tidegate.routes_io import write_snapshot

SLOW = 0.05  # requests/s: nothing refills during a test (one token per 20 s)


def route(name: str, url: str, *limits: RateLimit, auth: bool = False, stopped: bool = False) -> ServiceRoute:
    ups = () if stopped else (Upstream(replica_id=f"{name}-0", url=url),)
    limits = tuple(sorted(limits, key=lambda r: (-len(r.prefix), r.prefix)))  # as the reconciler publishes them
    return ServiceRoute(name=name, host=f"{name}.localhost", auth=auth, upstreams=ups, rate_limits=limits, stopped=stopped)


def statuses(client: httpx.Client, path: str, n: int, **kw: object) -> list[int]:
    return [client.get(path, **kw).status_code for _ in range(n)]  # type: ignore[arg-type]


def test_burst_then_429_with_retry_after(make_gateway: Callable[..., RunningGateway], openai_upstream: Proc) -> None:
    gw = make_gateway()
    gw.publish(snapshot_of(route("lim", openai_upstream.url, RateLimit(rps=SLOW, burst=2)),
                           route("fast", openai_upstream.url, RateLimit(rps=1, burst=0))))
    with gw.client("lim.localhost") as c:
        assert statuses(c, "/health", 3) == [200, 200, 200]  # 1 + burst
        r = c.get("/health")
        assert r.status_code == 429
        assert r.headers["content-type"] == "application/json"
        err = r.json()["error"]
        assert err["code"] == "rate_limit_exceeded" and err["type"] == "requests"
        assert "0.05 requests/s" in err["message"] and "burst of 2" in err["message"]
        # The wait is what the bucket needs for one token: up to 20 s, rounded up.
        assert 1 <= int(r.headers["retry-after"]) <= 20
    with gw.client("fast.localhost") as c:
        assert c.get("/health").status_code == 200
        r = c.get("/health")
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        time.sleep(float(r.headers["retry-after"]) + 0.05)
        assert c.get("/health").status_code == 200  # refilled after Retry-After
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert 'tidegate_gateway_requests_total{code="429",service="lim"} 1.0' in metrics


def test_per_header_keys_and_missing_header(make_gateway: Callable[..., RunningGateway], openai_upstream: Proc) -> None:
    gw = make_gateway()
    by_key = RateLimit(rps=SLOW, burst=1, key=RateLimitKey.HEADER, header="X-API-Key")
    gw.publish(snapshot_of(route("hdr", openai_upstream.url, by_key)))
    with gw.client("hdr.localhost") as c:
        assert statuses(c, "/health", 3, headers={"X-API-Key": "alice"}) == [200, 200, 429]
        r = c.get("/health", headers={"X-API-Key": "alice"})
        assert r.status_code == 429 and "X-API-Key value" in r.json()["error"]["message"]
        # Another key has its own bucket, from the same address.
        assert statuses(c, "/health", 3, headers={"X-API-Key": "bob"}) == [200, 200, 429]
        # No header: counted against the client address (leaving it out gains nothing).
        assert statuses(c, "/health", 3) == [200, 200, 429]


def test_per_ip_keys(make_gateway: Callable[..., RunningGateway], openai_upstream: Proc) -> None:
    """Two client addresses (127.0.0.1 and 127.0.0.2, both loopback) get a bucket each."""
    gw = make_gateway()
    gw.publish(snapshot_of(route("ip", openai_upstream.url, RateLimit(rps=SLOW, burst=1))))
    other = httpx.Client(base_url=gw.url, headers={"Host": "ip.localhost"},
                         transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=20)
    with gw.client("ip.localhost") as c, other:
        assert statuses(c, "/health", 3) == [200, 200, 429]
        assert statuses(other, "/health", 3) == [200, 200, 429]


def test_prefix_matching(make_gateway: Callable[..., RunningGateway], openai_upstream: Proc) -> None:
    gw = make_gateway()
    gw.publish(snapshot_of(route(
        "pre", openai_upstream.url,
        RateLimit(prefix="/", rps=SLOW, burst=3),
        RateLimit(prefix="/echo/", rps=SLOW, burst=0),
    )))
    with gw.client("pre.localhost") as c:
        assert statuses(c, "/echo/a", 2) == [200, 429]  # the longest matching prefix applies
        assert statuses(c, "/echo/b", 1) == [429]  # one bucket per prefix and client, not per path
        assert statuses(c, "/echoes", 1) == [200]  # not under `/echo/`: the `/` limit
        assert statuses(c, "/health", 4) == [200, 200, 200, 429]  # `/`: 1 + burst 3, shared with /echoes


def test_stopped_service_answers_503(make_gateway: Callable[..., RunningGateway], openai_upstream: Proc) -> None:
    from tidegate.routes import ModelRoute

    gw = make_gateway()
    off = route("off", openai_upstream.url, stopped=True).model_copy(update={"model": ModelRoute(name="off-model")})
    gw.publish(snapshot_of(off))
    with gw.client("off.localhost") as c:
        r = c.get("/health")
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "service_stopped"
    assert "tidegate start off" in r.json()["error"]["message"]
    assert "retry-after" not in r.headers  # it stays stopped until someone starts it
    # Its model on the OpenAI API says the same.
    token = create_token(gw.settings.state_dir, "api")
    gw.gateway.tokens.refresh(force=True)
    r = httpx.post(f"{gw.url}/v1/chat/completions", headers={"Authorization": f"Bearer {token}"},
                   json={"model": "off-model", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 503 and r.json()["error"]["code"] == "service_stopped"


def test_token_limits_in_process(make_gateway: Callable[..., RunningGateway], openai_upstream: Proc) -> None:
    limits = {"slow": [{"prefix": "/", "rps": SLOW, "burst": 1}], "*": [{"prefix": "/", "rps": 100.0, "burst": 50}]}
    gw = make_gateway(token_limits=limits)
    gw.publish(snapshot_of(route("tok", openai_upstream.url, auth=True)))
    slow = create_token(gw.settings.state_dir, "slow")
    other = create_token(gw.settings.state_dir, "other")
    gw.gateway.tokens.refresh(force=True)
    with gw.client("tok.localhost", slow) as c:
        assert statuses(c, "/health", 3) == [200, 200, 429]
        assert "this API token" in c.get("/health").json()["error"]["message"]
    with gw.client("tok.localhost", other) as c:
        assert statuses(c, "/health", 10) == [200] * 10
    # The same budget on the OpenAI API (the token is the key, whatever it calls).
    r = httpx.get(f"{gw.url}/v1/models", headers={"Authorization": f"Bearer {slow}"})
    assert r.status_code == 429 and r.headers["retry-after"]


def test_token_limits_file_errors_name_the_line(tmp_path: Path) -> None:
    good = tmp_path / "good.yml"
    good.write_text("previews: {}\ntoken_limits:\n  ci:\n    - {prefix: /v1, rps: 2, burst: 5}\n  '*': {rps: 9}\n")
    assert read_token_limits(good) == {
        "ci": [{"prefix": "/v1", "rps": 2.0, "burst": 5}], "*": [{"prefix": "/", "rps": 9.0, "burst": 0}],
    }
    bad = tmp_path / "bad.yml"
    bad.write_text("token_limits:\n  ci:\n    - prefix: /v1\n      rps: -1\n")
    with pytest.raises(TokenLimitsError, match=r"bad\.yml:4:7: token_limits\.ci\[0\]\.rps: .*greater than 0"):
        read_token_limits(bad)
    bad.write_text("token_limits:\n  ci:\n    - {rps: 1, burst: 2, key: x}\n")
    with pytest.raises(TokenLimitsError, match=r"bad\.yml:3:26: token_limits\.ci\[0\]\.key: unknown key"):
        read_token_limits(bad)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_limits_shared_by_two_workers(tmp_path: Path, openai_upstream: Proc) -> None:
    """`tidegate gateway --workers 2`: the kernel spreads fresh connections over both workers,
    and the service's and the token's buckets hold across them (one table, not one per worker)."""
    port = _free_port()
    state = tmp_path / "state"
    up = Upstream(replica_id="u-0", url=openai_upstream.url)
    write_snapshot(state, RoutesSnapshot(serial=1, services={
        "lim": ServiceRoute(name="lim", host="lim.localhost", auth=False, upstreams=(up,),
                            rate_limits=(RateLimit(rps=SLOW, burst=4),)),
        "tok": ServiceRoute(name="tok", host="tok.localhost", auth=True, upstreams=(up,)),
        "free": ServiceRoute(name="free", host="free.localhost", auth=False, upstreams=(up,)),
    }))
    token = create_token(state, "metered")
    settings = tmp_path / "settings.yml"
    settings.write_text(f"token_limits:\n  metered:\n    - {{rps: {SLOW}, burst: 3}}\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler.cli.main", "gateway", "--state", str(state), "--listen", f"127.0.0.1:{port}",
         "--workers", "2", "--settings", str(settings)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        def healthy() -> bool:
            try:
                return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, "gateway process", timeout=60)
        wait_for(lambda: len(list((state / "gateway").glob("stats-*.json"))) == 2, "both workers publishing", timeout=60)
        # A fresh connection per request (no keep-alive): both workers take some.
        lim = [httpx.get(f"{url}/health", headers={"Host": "lim.localhost"}).status_code for _ in range(20)]
        tok = [httpx.get(f"{url}/health", headers={"Host": "tok.localhost", "Authorization": f"Bearer {token}"}).status_code
               for _ in range(20)]
        for _ in range(20):
            assert httpx.get(f"{url}/health", headers={"Host": "free.localhost"}).status_code == 200
        assert lim == [200] * 5 + [429] * 15  # 1 + burst in total, not per worker
        assert tok == [200] * 4 + [429] * 16

        def both_served() -> bool:
            files = [json.loads(f.read_text()) for f in (state / "gateway").glob("stats-*.json")]
            return len(files) == 2 and all(f["services"].get("free", {}).get("rps_300", 0) > 0 for f in files)

        wait_for(both_served, "both workers answering requests")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    assert not list((state / "gateway").glob("ratelimit-*"))  # the table goes with the gateway


def test_shared_table_survives_a_holder_killed_in_the_lock(tmp_path: Path) -> None:
    """A worker SIGKILLed inside a decision leaves the semaphore taken: the next decision waits
    STALE_LOCK, takes it over, and the buckets are intact (same key, same budget)."""
    import os

    import posix_ipc

    from gateway.ratelimit import STALE_LOCK, SharedTable, key_hash

    table, sem = tmp_path / "table", f"/tidegate-rl-test-{os.getpid()}"
    SharedTable.create(table, sem)
    try:
        a = SharedTable.attach(table, sem)
        b = SharedTable.attach(table, sem)  # another worker's view of the same file
        h = key_hash(b"client")
        now = time.monotonic()
        assert a.take(h, now, 10.0, 10.0) == 0.0  # burst 1 at 0.1 rps: two pass
        posix_ipc.Semaphore(sem).acquire(0)  # a holder that never releases
        started = time.monotonic()
        assert b.take(h, now, 10.0, 10.0) == 0.0
        assert time.monotonic() - started >= STALE_LOCK * 0.9
        assert a.take(h, now, 10.0, 10.0) == pytest.approx(10.0)  # third: 10 s to wait, seen by both
    finally:
        SharedTable.destroy(table, sem)


def test_long_header_keys_are_kept_as_digests() -> None:
    """A client inventing huge header values cannot make the worker keep them: the hash cache
    holds a 16-byte digest of each, and each value still has a bucket of its own."""
    from gateway.ratelimit import Limiter, SharedTable

    limiter = Limiter(SharedTable.private())
    limits = (RateLimit(rps=SLOW, burst=0, key=RateLimitKey.HEADER, header="X-Key"),)

    def ask(value: bytes) -> int:
        scope = {"client": ("127.0.0.1", 1), "headers": [(b"x-key", value)]}
        try:
            limiter.check_service("svc", limits, scope, "/")
        except Exception as e:  # the 429
            return int(getattr(e, "status", 0))
        return 200

    a, b = b"a" * 60_000, b"a" * 59_999 + b"b"
    assert [ask(a), ask(a), ask(b), ask(b)] == [200, 429, 200, 429]
    assert all(len(k[2]) <= 64 for k in limiter._hashes)
