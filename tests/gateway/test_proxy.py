"""The proxy path against a real uvicorn gateway and real upstream servers."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from tests.gateway.aio_upstream import AioUpstream
from tests.gateway.conftest import RunningGateway, snapshot_of, wait_for
from tests.gateway.conftest import Upstream as Proc
from tidegate.routes import ServiceRoute, Upstream

MakeGateway = Callable[..., RunningGateway]
TokenFor = Callable[[RunningGateway], str]


@pytest.fixture
def aio() -> Iterator[AioUpstream]:
    up = AioUpstream().start()
    yield up
    up.stop()


@pytest.fixture
def aio_b() -> Iterator[AioUpstream]:
    up = AioUpstream().start()
    yield up
    up.stop()


def svc(name: str, *urls: str, **kw: object) -> ServiceRoute:
    ups = tuple(Upstream(replica_id=f"{name}-{i}", url=u) for i, u in enumerate(urls))
    return ServiceRoute(name=name, host=f"{name}.localhost", upstreams=ups, **kw)  # type: ignore[arg-type]


def test_host_routing_passes_request_and_sets_forwarding_headers(
    make_gateway: MakeGateway, token_for: TokenFor, openai_upstream: Proc
) -> None:
    gw = make_gateway()
    gw.publish(snapshot_of(svc("echo", openai_upstream.url)))
    token = token_for(gw)
    with gw.client("echo.localhost", token) as c:
        r = c.post(
            "/echo/a%2Fb?x=1&y=%20",
            content=b'{"k": 1}',
            headers={"Connection": "close, X-Hop", "X-Hop": "secret", "X-Forwarded-For": "10.0.0.1", "X-App": "v"},
        )
    assert r.status_code == 200, r.text
    seen = r.json()
    assert seen["path"] == "/echo/a%2Fb?x=1&y=%20"
    assert seen["body"] == {"k": 1}
    headers = {k.lower(): v for k, v in seen["headers"].items()}
    assert "authorization" not in headers
    assert "x-hop" not in headers
    assert headers["x-app"] == "v"
    assert headers["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
    assert headers["x-forwarded-host"] == "echo.localhost"
    assert headers["x-forwarded-proto"] == "http"


def test_path_routing_and_unknown_services(make_gateway: MakeGateway, openai_upstream: Proc) -> None:
    gw = make_gateway()
    gw.publish(snapshot_of(svc("open", openai_upstream.url, auth=False)))
    with gw.client() as c:
        assert c.get("/services/open/v1/models").json()["object"] == "list"
        assert c.get("/services/open/health").status_code == 200
        missing = c.get("/services/nope/x")
        assert missing.status_code == 404 and "nope" in missing.json()["error"]["message"]
    with gw.client("ghost.localhost") as c:
        r = c.get("/anything")
        assert r.status_code == 404
        assert "ghost.localhost" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("header", "status"),
    [
        pytest.param(None, 401, id="missing"),
        pytest.param("Bearer tg_wrong", 403, id="wrong"),
        pytest.param("Basic abc", 401, id="not-bearer"),
    ],
)
def test_auth_refusals(make_gateway: MakeGateway, openai_upstream: Proc, header: str | None, status: int) -> None:
    gw = make_gateway()
    gw.publish(snapshot_of(svc("sec", openai_upstream.url)))
    with gw.client("sec.localhost") as c:
        r = c.get("/health", headers={"Authorization": header} if header else {})
    assert r.status_code == status
    assert r.json()["error"]["type"] == "authentication_error"


def test_forward_auth_opt_in_and_token_revocation(
    make_gateway: MakeGateway, token_for: TokenFor, openai_upstream: Proc
) -> None:
    from gateway.access.tokens import load_records, revoke_token

    gw = make_gateway()
    gw.publish(snapshot_of(svc("fwd", openai_upstream.url, forward_auth=True)))
    token = token_for(gw)
    stored = (gw.settings.state_dir / "tokens.json").read_text()
    assert token not in stored
    with gw.client("fwd.localhost", token) as c:
        seen = {k.lower(): v for k, v in c.get("/echo").json()["headers"].items()}
        assert seen.get("authorization") == f"Bearer {token}"
        name = load_records(gw.settings.state_dir)[0].name
        revoke_token(gw.settings.state_dir, name)
        wait_for(lambda: c.get("/echo").status_code == 403, "revocation to take effect")


def test_no_ready_replica_is_503_with_retry_after(make_gateway: MakeGateway) -> None:
    gw = make_gateway()
    gw.publish(snapshot_of(ServiceRoute(name="down", host="down.localhost", auth=False)))
    with gw.client("down.localhost") as c:
        r = c.get("/")
    assert r.status_code == 503
    assert int(r.headers["retry-after"]) > 0


def test_unix_socket_upstream(make_gateway: MakeGateway, tgi_unix_upstream: Proc) -> None:
    assert tgi_unix_upstream.url.startswith("unix://")
    gw = make_gateway()
    gw.publish(snapshot_of(svc("tgi", tgi_unix_upstream.url, auth=False)))
    with gw.client("tgi.localhost") as c:
        r = c.post("/generate", json={"inputs": "one two three", "parameters": {"max_new_tokens": 2, "details": True}})
    assert r.status_code == 200
    assert r.json()["generated_text"] == "one two"
    assert r.json()["details"]["finish_reason"] == "length"


def test_sse_chunk_reaches_client_before_upstream_finishes(make_gateway: MakeGateway, aio: AioUpstream) -> None:
    gw = make_gateway()
    gw.publish(snapshot_of(svc("sse", aio.url, auth=False)))
    with gw.client("sse.localhost") as c, c.stream("GET", "/sse") as r:
        chunks = r.iter_raw()
        # The upstream sends "last" only after we release it, so buffering would hang here.
        assert next(chunks) == b"data: first\n\n"
        assert not aio.gates.release_sse.is_set()
        aio.gates.release_sse.set()
        assert b"".join(chunks) == b"data: last\n\n"


def test_response_hop_by_hop_headers_dropped(make_gateway: MakeGateway, aio: AioUpstream) -> None:
    gw = make_gateway()
    gw.publish(snapshot_of(svc("hop", aio.url, auth=False)))
    with gw.client("hop.localhost") as c:
        r = c.get("/hit")
    assert r.headers["x-kept"] == "yes"
    assert "keep-alive" not in r.headers
    assert len(r.headers.get_list("server")) == 1 and len(r.headers.get_list("date")) == 1


def test_least_outstanding_and_counters_released(make_gateway: MakeGateway, aio: AioUpstream, aio_b: AioUpstream) -> None:
    gw = make_gateway()
    gw.publish(snapshot_of(svc("lb", aio.url, aio_b.url, auth=False)))
    held: list[httpx.Response] = []
    with gw.client("lb.localhost") as c:
        worker = threading.Thread(target=lambda: held.append(c.get("/hold")))
        worker.start()
        wait_for(lambda: aio.gates.holding + aio_b.gates.holding == 1, "one request held")
        busy, idle = (aio, aio_b) if aio.gates.holding else (aio_b, aio)
        for _ in range(6):
            assert c.get("/hit").json()["port"] == idle.port
        assert busy.gates.hits == 0
        assert sum(gw.gateway.balancer.in_flight.values()) == 1
        busy.gates.release_hold.set()
        worker.join(10)
    assert held[0].json() == {"held": True}
    assert gw.gateway.balancer.in_flight == {}


def test_refused_replica_is_cooled_and_request_retried(make_gateway: MakeGateway, aio: AioUpstream) -> None:
    gw = make_gateway()
    dead = "http://127.0.0.1:9"  # discard port: nothing listens on loopback
    gw.publish(snapshot_of(svc("retry", dead, aio.url, auth=False)))
    with gw.client("retry.localhost") as c:
        for _ in range(4):
            assert c.get("/hit").status_code == 200
    assert "retry-0" in gw.gateway.balancer.cooled_until
    assert aio.gates.hits == 4
    assert gw.gateway.balancer.in_flight == {}


def test_body_limit(make_gateway: MakeGateway, openai_upstream: Proc) -> None:
    gw = make_gateway(max_body_bytes=1000)
    gw.publish(snapshot_of(svc("small", openai_upstream.url, auth=False)))
    with gw.client("small.localhost") as c:
        assert c.post("/echo", content=b"x" * 1001).status_code == 413
        assert c.post("/echo", content=json.dumps({"a": "b"})).status_code == 200


def test_websocket_proxy(make_gateway: MakeGateway, aio: AioUpstream, token_for: TokenFor) -> None:
    gw = make_gateway()
    gw.publish(snapshot_of(svc("ws", aio.url)))
    token = token_for(gw)
    with ws_connect(
        f"ws://127.0.0.1:{gw.port}/services/ws/ws",
        additional_headers={"Authorization": f"Bearer {token}"},
        subprotocols=["echo"],  # type: ignore[list-item]
    ) as sock:
        assert sock.subprotocol == "echo"
        sock.send("hi")
        assert sock.recv(5) == "echo:hi"
        sock.send(b"abc")
        assert sock.recv(5) == b"cba"


def test_health_metrics_and_stats_file(make_gateway: MakeGateway, openai_upstream: Proc) -> None:
    gw = make_gateway()
    gw.publish(snapshot_of(svc("m", openai_upstream.url, auth=False)))
    before = time.time()
    with gw.client("m.localhost") as c:
        for _ in range(3):
            c.get("/health")
    with gw.client() as c:
        assert c.get("/healthz").json()["status"] == "ok"
        metrics = c.get("/metrics").text
    assert 'tidegate_gateway_requests_total{code="200",service="m"}' in metrics
    assert "tidegate_gateway_request_duration_seconds_bucket" in metrics
    stats_dir = gw.settings.state_dir / "gateway"

    def stats() -> dict[str, object] | None:
        for f in stats_dir.glob("stats-*.json"):
            data = json.loads(f.read_text())
            found = data["services"].get("m")
            if found and found["rps_300"] == pytest.approx(3 / 300) and found["in_flight"] == 0:  # all 3 done
                return found  # type: ignore[no-any-return]
        return None

    seen = wait_for(stats, "stats file with service m")
    assert seen["rps_30"] == pytest.approx(3 / 30), seen
    assert seen["rps_300"] == pytest.approx(3 / 300)
    assert seen["in_flight"] == 0 and seen["held"] == 0
    assert seen["per_upstream_in_flight"] == {"m-0": 0}
    # The wall time of the replica's last answer to a proxied request: liveness counts it alive.
    assert before <= seen["per_upstream_answered_at"]["m-0"] <= time.time(), seen  # type: ignore[index]
    assert "rps_6" in seen  # the autoscaler's panic window


def test_webhooks(make_gateway: MakeGateway, token_for: TokenFor) -> None:
    import hashlib
    import hmac

    from tidegate.signals import drain_signals

    gw = make_gateway(webhook_secret="s3cret")
    body = json.dumps({"ref": "refs/heads/main"}).encode()
    good = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    with gw.client() as c:
        assert c.post("/hooks/github", content=body, headers={"X-Hub-Signature-256": "sha256=00"}).status_code == 401
        assert c.post("/hooks/github", content=body).status_code == 401
        ok = c.post("/hooks/github", content=body, headers={"X-Hub-Signature-256": good, "X-GitHub-Event": "push"})
        assert ok.status_code == 202
        assert c.post("/hooks/git").status_code == 401
        assert c.post("/hooks/git", headers={"Authorization": f"Bearer {token_for(gw)}"}).status_code == 202
    signals = drain_signals(gw.settings.state_dir)
    assert [(s["kind"], s.get("ref")) for s in signals] == [("wake", "refs/heads/main"), ("wake", None)]


def test_in_flight_request_to_removed_replica_finishes(make_gateway: MakeGateway, aio: AioUpstream, aio_b: AioUpstream) -> None:
    gw = make_gateway()
    gw.publish(snapshot_of(svc("mv", aio.url, auth=False)))
    held: list[httpx.Response] = []
    with gw.client("mv.localhost") as c:
        worker = threading.Thread(target=lambda: held.append(c.get("/hold")))
        worker.start()
        wait_for(lambda: aio.gates.holding == 1, "request held on the old replica")
        gw.publish(snapshot_of(svc("mv", aio_b.url, auth=False)))  # the old replica leaves the routes
        with gw.client("mv.localhost") as c2:
            assert c2.get("/hit").json()["port"] == aio_b.port
        aio.gates.release_hold.set()
        worker.join(10)
    assert held[0].status_code == 200 and held[0].json() == {"held": True}
    assert gw.gateway.balancer.in_flight == {}


def test_gateway_adds_no_default_headers(make_gateway: MakeGateway, openai_upstream: Proc) -> None:
    gw = make_gateway()
    gw.publish(snapshot_of(svc("bare", openai_upstream.url, auth=False)))
    with gw.client("bare.localhost") as c:
        for name in ("accept", "accept-encoding", "user-agent"):
            c.headers.pop(name, None)
        seen = {k.lower() for k in c.post("/echo", content=b"{}").json()["headers"]}
    assert not seen & {"accept", "accept-encoding", "user-agent", "content-type"}


def test_access_log_is_structured_and_token_free(
    make_gateway: MakeGateway, token_for: TokenFor, openai_upstream: Proc, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    gw = make_gateway(access_log=True)
    gw.publish(snapshot_of(svc("logged", openai_upstream.url)))
    token = token_for(gw)
    with caplog.at_level(logging.INFO, logger="tidegate.gateway.access"), gw.client("logged.localhost", token) as c:
        assert c.get(f"/echo?key={token}").status_code == 200
        assert c.get("/echo", headers={"Authorization": "Bearer tg_wrong"}).status_code == 403
        wait_for(lambda: len([r for r in caplog.records if r.name == "tidegate.gateway.access"]) >= 2, "access log lines")
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "tidegate.gateway.access"]
    assert [(line["service"], line["path"], line["status"]) for line in lines] == [("logged", "/echo", 200), ("logged", "/echo", 403)]
    assert token not in caplog.text


def test_upstream_read_timeout_is_504(make_gateway: MakeGateway, aio: AioUpstream) -> None:
    gw = make_gateway(first_byte_timeout=0.3)
    gw.publish(snapshot_of(svc("slow", aio.url, auth=False)))
    with gw.client("slow.localhost") as c:
        r = c.get("/hold")  # the replica never answers until released
    aio.gates.release_hold.set()
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "upstream_timeout"
    assert gw.gateway.balancer.in_flight == {}


def test_every_replica_refusing_is_502(make_gateway: MakeGateway) -> None:
    gw = make_gateway()
    gw.publish(snapshot_of(svc("dead", "http://127.0.0.1:9", "unix:///nonexistent/tidegate.sock", auth=False)))
    with gw.client("dead.localhost") as c:
        r = c.get("/")
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_refused"
    assert set(gw.gateway.balancer.cooled_until) == {"dead-0", "dead-1"}
