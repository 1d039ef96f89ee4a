"""The control API and the dashboard against a real `tidegate up` with real local replicas, and
the dashboard in a real headless Chromium (Debian's, driven by Playwright).

The browser test takes the README's screenshots (overview.png and service.png) into its own tmp dir;
`TIDEGATE_SCREENSHOTS=docs/screenshots` (what `make screenshots` sets) writes them where the README
shows them, so an ordinary test run leaves the checkout as it was.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from tests.e2e.helpers import ROOT, Remote, Tidegate, app_source, service_yaml, wait_for

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SCREENSHOTS_ENV = "TIDEGATE_SCREENSHOTS"

LOGGING_APP = app_source(log_requests=True)


class Deployed:
    def __init__(self, remote: Remote, tg: Tidegate) -> None:
        self.remote, self.tg = remote, tg
        self.base = f"http://127.0.0.1:{tg.port}"
        self.rev1 = remote.push(
            {"app.py": LOGGING_APP, "web.dstack.yml": service_yaml("web", 1, "v1"), "other.dstack.yml": service_yaml("other", 1, "o")},
            "web and other, first deploy",
        )
        self.admin = self.token("ops", "--admin")
        self.inference = self.token("app")
        tg.up(remote.url)
        wait_for(lambda: self.ready("web", self.rev1) and self.ready("other", self.rev1), 90, "first deploy")

    def token(self, name: str, *flags: str) -> str:
        out = self.tg.run("token", "create", name, *flags)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def api(self, path: str, token: str | None = "admin", **kwargs: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {self.admin if token == 'admin' else token}"} if token else {}
        return httpx.request(kwargs.pop("method", "GET"), self.base + path, headers=headers, timeout=10, **kwargs)

    def ready(self, name: str, revision: str) -> bool:
        rows = {s["name"]: s for s in self.api("/api/v1/services").json()}
        s = rows.get(name)
        return bool(s and s["revision"] == revision and s["ready"] == 1 and s["status"] == "running")


@pytest.fixture
def deployed(remote: Remote, tidegate: Tidegate) -> Deployed:
    return Deployed(remote, tidegate)


def test_control_api_against_a_real_up(deployed: Deployed) -> None:
    d = deployed
    # Scopes: nothing without a token, an inference token is refused, an admin token reads.
    assert d.api("/api/v1/services", token=None).status_code == 401
    assert d.api("/api/v1/services", token=d.inference).status_code == 403
    # The gateway host answers too; a service host keeps its own paths.
    via_host = httpx.get(d.base + "/api/v1/services", headers={"host": "gateway.localhost", "authorization": f"Bearer {d.admin}"})
    assert via_host.status_code == 200
    service = d.api("/api/v1/services/web").json()
    assert service["service"]["commit_subject"] == "web and other, first deploy"
    assert service["replicas"][0]["backend"] == "local" and service["replicas"][0]["phase"] == "ready"
    assert service["deploys"][0]["revision"] == d.rev1
    validate(d.api("/api/schema/openapi.json", token=None).json())

    # A replica's log through the API, and a request showing up in it.
    assert d.tg.get("web", "/from-the-test").status_code == 200
    wait_for(lambda: "served GET /from-the-test" in d.api("/api/v1/services/web/logs").json()["lines"], 20, "log line")

    # The CLI against the remote API (no state dir needed).
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDEGATE_")}
    env.update({"TIDEGATE_SERVER": d.base, "TIDEGATE_TOKEN": d.admin})
    ps = subprocess.run([sys.executable, "-m", "reconciler.cli.main", "ps"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert ps.returncode == 0, ps.stderr
    assert "web" in ps.stdout and "other" in ps.stdout and "1/1" in ps.stdout

    # Stop and start through the API reach the running reconciler.
    assert d.api("/api/v1/services/other/stop", method="POST").status_code == 202
    wait_for(lambda: {s["name"]: s for s in d.api("/api/v1/services").json()}["other"]["status"] == "stopped", 30, "stopped")
    assert d.api("/api/v1/services/other/start", method="POST").status_code == 202
    wait_for(lambda: d.ready("other", d.rev1), 60, "started again")

    # A sync is a wake-up: a push is deployed at once (the fixture's interval is 1 s anyway, so
    # this checks the signal is accepted and the push lands).
    rev2 = d.remote.push({"other.dstack.yml": service_yaml("other", 1, "o2")}, "other: new greeting")
    assert d.api("/api/v1/sync", method="POST").status_code == 202
    wait_for(lambda: d.ready("other", rev2), 90, "other at rev2")


@pytest.fixture
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (scripts/system-packages.sh)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def test_dashboard_in_a_real_browser(deployed: Deployed, browser: Any, tmp_path: Path) -> None:
    shots = Path(os.environ.get(SCREENSHOTS_ENV) or tmp_path)
    shots = shots if shots.is_absolute() else ROOT / shots
    d = deployed
    page = browser.new_page(viewport={"width": 1280, "height": 900})

    # An unauthenticated browser is refused: sent to the login form, the API answers 401.
    page.goto(d.base + "/ui/")
    assert page.url.endswith("/ui/login")
    assert page.evaluate("fetch('/api/v1/services').then(r => r.status)") == 401
    page.fill("input[name=token]", d.inference)
    page.click("#login-submit")
    assert "not an admin token" in page.inner_text("#login-error")

    page.fill("input[name=token]", d.admin)
    page.click("#login-submit")
    page.wait_for_selector("#svc-web")
    assert page.url.endswith("/ui/")
    assert "other" in page.inner_text("#svc-other")
    assert "web and other, first deploy" in page.inner_text("#svc-web")
    assert page.evaluate("document.cookie") == ""  # HttpOnly: page scripts never see the token

    # A push changes the row without a reload (the marker survives only if the page is not reloaded).
    page.evaluate("window.__noReload = 'still here'")
    # The same push breaks other's file: its row says it is kept, and the error shows file and line.
    broken = service_yaml("other", 1, "o") + "replicas_typo: 3\n"
    rev2 = d.remote.push({"web.dstack.yml": service_yaml("web", 1, "v2"), "other.dstack.yml": broken}, "web: greeting v2")
    page.wait_for_selector(f'#svc-web[data-revision="{rev2}"]', timeout=90_000)
    page.wait_for_selector('#svc-web[data-status="running"]', timeout=90_000)
    page.wait_for_selector('#svc-other[data-status="kept"]', timeout=30_000)
    assert "web: greeting v2" in page.inner_text("#svc-web")
    assert "other.dstack.yml has errors" in page.inner_text("#svc-other")
    problems = page.inner_text("#validation")
    assert "other.dstack.yml:15:" in problems and "replicas_typo" in problems, problems
    assert page.evaluate("window.__noReload") == "still here"
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "overview.png"), full_page=True)

    # The service page: the log tail shows new lines as requests arrive; the chart fills with the
    # rps the gateway measures while a client sends requests (sampled every 5 s).
    for i in range(5):
        d.tg.get("web", f"/warmup-{i}")
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=f"{d.base}/services/web", timeout=5) as client:
            while not stop.wait(0.05):
                client.get("/traffic")

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    page.goto(d.base + "/ui/services/web")
    page.wait_for_selector("#replicas")
    try:
        page.wait_for_selector("svg.chart polyline.rps", timeout=30_000)
        page.wait_for_function(
            "!document.querySelector('.summary').textContent.includes(' 0.00 rps')", timeout=30_000
        )
    finally:
        stop.set()
        sender.join(10)
    page.wait_for_function("document.getElementById('log').textContent.includes('listening')", timeout=20_000)
    for i in range(3):
        assert d.tg.get("web", f"/browser-{i}").status_code == 200
    page.wait_for_function("document.getElementById('log').textContent.includes('served GET /browser-2')", timeout=20_000)
    assert "~ env" in page.inner_text("#deploys") or "greeting" in page.inner_text("#deploys").lower() or "v2" in page.inner_text("#deploys")
    # Admin buttons act (CSRF header sent by the page's script).
    page.click("button[data-action='/api/v1/sync']")
    page.wait_for_function("document.querySelector('.action-result').textContent.includes('reconciles now')", timeout=10_000)
    page.screenshot(path=str(shots / "service.png"), full_page=True)

    # A cookie-authenticated POST without the page's CSRF header is refused.
    status = page.evaluate("fetch('/api/v1/sync', {method: 'POST'}).then(r => r.status)")
    assert status == 403
