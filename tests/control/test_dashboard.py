"""The dashboard through Litestar's test client: login, pages, live fragments; and the gateway's dispatch."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from gateway.server import build_app
from gateway.settings import GatewaySettings
from reconciler.control.app import ago, left
from reconciler.control.chart import rps_chart
from reconciler.control.models import SamplePoint, ScalingOut
from reconciler.control.ui import _live
from tests.control.conftest import Api


def test_pages_need_a_session_and_the_login_sets_a_strict_httponly_cookie(api: Api) -> None:
    r = api.client.get("/ui/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/login"
    bad = api.client.post("/ui/login", data={"token": api.inference})
    assert bad.status_code == 401 and "not an admin token" in bad.text
    r = api.client.post("/ui/login", data={"token": api.admin}, follow_redirects=False)
    assert r.status_code == 303
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    page = api.client.get("/ui/")
    assert page.status_code == 200 and 'id="svc-web"' in page.text and "replicas_typo" in page.text
    assert 'data-action="/api/v1/sync"' in page.text  # admin sees the buttons


def test_cross_site_login_is_refused(api: Api) -> None:
    r = api.client.post("/ui/login", data={"token": api.admin}, headers={"origin": "http://evil.example"})
    assert r.status_code == 403 and "set-cookie" not in r.headers


def test_service_page_has_replicas_chart_deploys_and_log_tail(api: Api) -> None:
    page = api.client.get("/ui/services/web", headers=api.h())
    assert page.status_code == 200
    for part in ('id="replicas"', "web-aaaaaaaa-1", "<svg", 'id="deploys"', "~ env: (none) -&gt; GREETING", 'id="log-replica"'):
        assert part in page.text, part
    assert api.client.get("/ui/services/nope", headers=api.h()).status_code == 404


def test_static_assets_are_shipped(api: Api) -> None:
    js = api.client.get("/ui/static/app.js")
    assert js.status_code == 200 and "EventSource" in js.text
    assert api.client.get("/ui/static/style.css").status_code == 200


def test_live_fragments_are_one_line_and_sent_only_on_change(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("reconciler.control.ui.LIVE_EVERY", 0.0)
    values = iter(["<p>a\nb</p>", "<p>a\nb</p>", "<p>c</p>"])

    async def two() -> list[str | int | bytes | None]:
        stopping = threading.Event()
        gen = _live(lambda: next(values), stopping)
        got = [(await gen.__anext__()).data, (await gen.__anext__()).data]
        stopping.set()  # `up` shutting down ends the stream
        assert [m async for m in gen] == []
        return got

    assert asyncio.run(two()) == ["<p>a b</p>", "<p>c</p>"]  # the unchanged second render is not sent


def test_chart_marks_decisions_and_escapes_reasons() -> None:
    now = 10_000.0
    svg = rps_chart(
        [SamplePoint(at=now - 60, rps=2.0, ready=1), SamplePoint(at=now - 5, rps=4.0, ready=2)],
        [ScalingOut(at=now - 30, previous=1, count=2, reason="rps <4> over 1")],
        now,
    )
    assert svg.startswith("<svg") and svg.count("<polyline") == 2
    assert "rps &lt;4&gt; over 1" in svg and "1→2" in svg
    assert "collecting samples" in rps_chart([], [], now)


def test_time_helpers() -> None:
    assert ago(100.0, 130.0) == "30s" and ago(None) == "-"
    assert left(100.0, 130.0) == "expired" and left(130.0 + 7200, 130.0) == "2h"


class Recorder:
    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.paths.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


def test_gateway_hands_only_api_and_ui_on_the_gateway_host_to_the_control_app(tmp_path: Path) -> None:
    control = Recorder()
    settings = GatewaySettings(state_dir=tmp_path, watch_routes=False, access_log=False)
    with TestClient(build_app(settings, control=control)) as client:
        assert client.get("/api/v1/services", headers={"host": "127.0.0.1:8080"}).text == "ok"
        assert client.get("/ui/", headers={"host": "gateway.localhost:8080"}).text == "ok"
        assert client.get("/ui", headers={"host": "gateway.localhost"}).text == "ok"
        # A service host keeps every path (its own /api/ included); other paths stay on the fast path.
        assert client.get("/api/v1/x", headers={"host": "web.localhost:8080"}).status_code == 404
        assert client.get("/healthz", headers={"host": "127.0.0.1:8080"}).json()["status"] == "ok"
        assert client.get("/apix", headers={"host": "127.0.0.1:8080"}).status_code == 404
    assert control.paths == ["/api/v1/services", "/ui/", "/ui"]


def test_chart_window_follows_the_samples_between_two_minutes_and_an_hour() -> None:
    now = 100_000.0
    young = rps_chart([SamplePoint(at=now - 30, rps=1.0, ready=1)], [], now)
    assert "-2 min" in young
    mid = rps_chart([SamplePoint(at=now - 900, rps=1.0, ready=1)], [], now)
    assert "-15 min" in mid
    old = rps_chart([SamplePoint(at=now - 7200, rps=1.0, ready=1), SamplePoint(at=now - 10, rps=1.0, ready=1)], [], now)
    assert "-60 min" in old
