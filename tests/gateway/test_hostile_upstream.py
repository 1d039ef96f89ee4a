"""A real gateway in front of a raw-socket replica that misbehaves: every case is a 502/504 in the
API's error shape or a cut client connection, with one log line, never a 500 with a traceback."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.gateway.conftest import RunningGateway, snapshot_of
from tests.gateway.raw_upstream import Exchange, RawUpstream, wait_until
from tidegate.routes import ServiceRoute, Upstream

MakeGateway = Callable[..., RunningGateway]

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}"


def _ok(ex: Exchange) -> bool:
    ex.send(OK)
    return True


def _huge_head(ex: Exchange) -> bool:
    ex.send(b"HTTP/1.1 200 OK\r\n")
    filler = b"X-Filler: " + b"a" * 1000 + b"\r\n"
    try:
        for _ in range(70_000):  # 70 MB of headers unless the gateway hangs up first
            ex.send(filler * 10)
    except OSError:
        return False
    return False


def _trailing(ex: Exchange) -> bool:
    # A complete response, then a second message nobody asked for on the same connection.
    ex.send(OK + b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nbad")
    return True


def _te(coding: bytes) -> Script:
    def script(ex: Exchange) -> bool:
        ex.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + coding + b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        return coding == b"chunked"

    return script


def _reset_mid_body(ex: Exchange) -> bool:
    ex.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + b"partial body ")
    time.sleep(0.2)
    ex.reset()
    return False


def _clean_close_body(ex: Exchange) -> bool:
    ex.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nwhole body")
    return False


def _truncated(ex: Exchange) -> bool:
    ex.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly a part")
    return False


def _switch(ex: Exchange) -> bool:
    ex.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x02hi")
    return False


def _slow_chunks(ex: Exchange) -> bool:
    ex.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n")
    time.sleep(0.6)
    ex.send(b"2\r\ncd\r\n0\r\n\r\n")
    return True


def _slow_head(ex: Exchange) -> bool:
    time.sleep(0.6)
    ex.send(OK)
    return True


Script = Callable[[Exchange], bool]
SCRIPTS: dict[str, Script] = {
    "ok": _ok, "huge-head": _huge_head, "trailing": _trailing, "te-gzip": _te(b"gzip"),
    "te-gzip-chunked": _te(b"gzip, chunked"), "te-chunked": _te(b"chunked"), "reset": _reset_mid_body,
    "close-delimited": _clean_close_body, "truncated": _truncated, "switch": _switch, "slow-chunks": _slow_chunks,
    "slow-head": _slow_head, "hang": lambda ex: ex.hang_until_closed() or False,
}


@pytest.fixture
def raw() -> Iterator[RawUpstream]:
    up = RawUpstream(SCRIPTS).start()
    yield up
    up.stop()


def route(url: str) -> ServiceRoute:
    return ServiceRoute(name="bad", host="bad.localhost", upstreams=(Upstream(replica_id="bad-0", url=url),), auth=False)


@pytest.fixture
def gw(make_gateway: MakeGateway, raw: RawUpstream) -> RunningGateway:
    gateway = make_gateway(first_byte_timeout=0.3, read_timeout=2.0)
    gateway.publish(snapshot_of(route(raw.url)))
    return gateway


def _no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        pytest.param("/huge-head", 502, "over 64 KiB", id="head-over-64KiB"),
        pytest.param("/te-gzip", 502, "transfer coding", id="te-gzip"),
        pytest.param("/te-gzip-chunked", 502, "transfer coding", id="te-gzip-then-chunked"),
        pytest.param("/truncated", 502, "mid-response", id="truncated-content-length"),
        pytest.param("/switch", 502, "switched protocols", id="101-on-plain-request"),
        pytest.param("/slow-head", 504, "timed out", id="first-byte-timeout"),
    ],
)
def test_broken_replica_answers_are_502_in_api_shape(
    gw: RunningGateway, caplog: pytest.LogCaptureFixture, path: str, status: int, message: str
) -> None:
    with caplog.at_level(logging.INFO), gw.client("bad.localhost") as c:
        r = c.get(path)
    assert r.status_code == status
    error = r.json()["error"]
    assert error["type"] == "upstream_error" and message in error["message"]
    assert gw.gateway.balancer.in_flight == {}
    _no_tracebacks(caplog)


def test_bytes_after_a_complete_response_close_the_connection(gw: RunningGateway, raw: RawUpstream) -> None:
    with gw.client("bad.localhost") as c:
        r = c.get("/trailing")
        assert r.status_code == 200 and r.json() == {"ok": True}
        assert r.headers.get_list("content-length") == ["11"]  # nothing of the stray message leaked in
        assert c.get("/ok").status_code == 200
    assert raw.connections == 2  # the out-of-step connection was never reused


def test_only_chunked_is_chunked(gw: RunningGateway) -> None:
    with gw.client("bad.localhost") as c:
        assert c.get("/te-chunked").content == b"hello"


def test_until_close_body_ends_only_on_a_clean_close(gw: RunningGateway, caplog: pytest.LogCaptureFixture) -> None:
    with gw.client("bad.localhost") as c:
        assert c.get("/close-delimited").content == b"whole body"
        with caplog.at_level(logging.INFO), pytest.raises(httpx.RemoteProtocolError):
            c.get("/reset")  # cut: the client must not take a partial body for a whole one
    lines = [r for r in caplog.records if r.name == "tidegate.gateway"]
    assert len(lines) == 1 and "mid-response" in lines[0].getMessage()
    _no_tracebacks(caplog)
    assert gw.gateway.balancer.in_flight == {}


def test_silence_between_chunks_has_its_own_timeout(make_gateway: MakeGateway, raw: RawUpstream) -> None:
    generous = make_gateway(first_byte_timeout=0.3, read_timeout=2.0)
    generous.publish(snapshot_of(route(raw.url)))
    with generous.client("bad.localhost") as c:
        assert c.get("/slow-chunks").content == b"abcd"  # 0.6 s between chunks < read timeout
    strict = make_gateway(first_byte_timeout=5.0, read_timeout=0.3)
    strict.publish(snapshot_of(route(raw.url)))
    with strict.client("bad.localhost") as c:
        assert c.get("/slow-head").status_code == 200  # 0.6 s to the head < first-byte timeout
        with pytest.raises(httpx.RemoteProtocolError):
            c.get("/slow-chunks")


def test_client_disconnect_cancels_the_upstream_request_and_releases_counters(make_gateway: MakeGateway, raw: RawUpstream) -> None:
    gw = make_gateway(first_byte_timeout=0)  # the replica's silence would last until the timeout
    gw.publish(snapshot_of(route(raw.url)))
    clients = []
    for _ in range(12):
        s = socket.create_connection(("127.0.0.1", gw.port))
        s.sendall(b"GET /hang HTTP/1.1\r\nHost: bad.localhost\r\n\r\n")
        clients.append(s)
    assert wait_until(lambda: len([r for r in raw.requests if b"/hang" in r]) == 12)
    assert gw.gateway.stats.service("bad").in_flight == 12
    started = time.monotonic()
    for s in clients:
        s.close()
    assert wait_until(lambda: gw.gateway.stats.service("bad").in_flight == 0, 2.0)
    assert wait_until(lambda: raw.closed_by_peer == 12, 2.0)  # every replica connection closed
    assert time.monotonic() - started < 2.0
    assert gw.gateway.balancer.in_flight == {}


def test_small_truncated_body_never_reaches_the_client_as_complete(gw: RunningGateway) -> None:
    with gw.client("bad.localhost") as c:
        r = c.get("/truncated")
    assert r.status_code == 502
    assert json.loads(r.content)["error"]["code"] == "upstream_failed"
