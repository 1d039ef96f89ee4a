"""Teardown drains, and a stopped service says so, with a real `tidegate up` (reconciler + gateway).

The drill: a client loops over a service while its config file is deleted in a commit, and a long
request is in flight at that moment. The service must leave the routes before its replica stops:
the loop sees only 200s, then only 404s (never a 502 from a replica stopped under it), and the long
request completes. Before that, `tidegate stop` makes the gateway answer 503 `service_stopped`
(no Retry-After: it stays stopped until `tidegate start`), and `start` brings it back.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.e2e.helpers import SLOW_APP, Remote, Tidegate, replica_trees, service_yaml, wait_for

pytestmark = pytest.mark.slow

class Loop(threading.Thread):
    """GETs a service through the gateway until stopped, keeping every status in order."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.seen: list[int | str] = []

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                try:
                    self.seen.append(client.get(self.url).status_code)
                except httpx.HTTPError as e:
                    self.seen.append(repr(e))
                time.sleep(0.01)


def _ready(tg: Tidegate, name: str) -> bool:
    s = tg.ps().get(name)
    return bool(s and s["ready"] == 1 and s["replicas"] and s["replicas"][0]["phase"] == "ready")


def test_stop_answers_503_then_deletion_drains(remote: Remote, tidegate: Tidegate) -> None:
    tg = tidegate
    slow = service_yaml("web", 1).replace("python3 app.py 8000", "python3 slowapp.py 8000")
    remote.push({"slowapp.py": SLOW_APP, "web.dstack.yml": slow, "keep.dstack.yml": service_yaml("keep", 1)}, "two services")
    tg.up(remote.url)
    wait_for(lambda: _ready(tg, "web") and _ready(tg, "keep"), 120, "first deploy")
    assert tg.get("web").status_code == 200

    # `tidegate stop`: 503 saying so, no Retry-After; `start` brings it back.
    out = tg.run("stop", "web")
    assert out.returncode == 0, out.stderr
    stopped = wait_for(lambda: (r := tg.get("web")).status_code == 503 and r, 60, "the gateway answering 503")
    error = stopped.json()["error"]
    assert error["code"] == "service_stopped" and "stopped" in error["message"] and "tidegate start web" in error["message"]
    assert "retry-after" not in stopped.headers
    out = tg.run("start", "web")
    assert out.returncode == 0, out.stderr
    wait_for(lambda: tg.get("web").status_code == 200, 120, "web started again")
    wait_for(lambda: _ready(tg, "web"), 60, "web ready")

    # The drill: a client loop plus one long request in flight while the file is deleted.
    base = f"http://127.0.0.1:{tg.port}/services/web"
    loop = Loop(base + "/")
    loop.start()
    long_result: list[httpx.Response | str] = []

    def long_request() -> None:
        try:
            long_result.append(httpx.get(base + "/slow?s=6", timeout=60))
        except httpx.HTTPError as e:
            long_result.append(repr(e))

    long = threading.Thread(target=long_request, daemon=True)
    wait_for(lambda: len(loop.seen) > 5, 30, "client traffic")
    long.start()
    time.sleep(0.5)  # the long request is at the replica
    remote.push({"web.dstack.yml": None}, "remove web")
    try:
        wait_for(lambda: "web" not in tg.ps(), 120, "web deleted")
        wait_for(lambda: not any(rid.startswith("web-") for rid in replica_trees(tg.state)), 60, "web's processes gone")
        wait_for(lambda: loop.seen[-3:] == [404, 404, 404], 30, "404s after the deletion")
    finally:
        loop.stop.set()
        loop.join(30)
        long.join(60)
    seen = loop.seen
    first_404 = seen.index(404)
    assert set(seen[:first_404]) == {200}, seen
    assert set(seen[first_404:]) == {404}, seen  # no 502/503 from a replica stopped under a request
    assert long_result and isinstance(long_result[0], httpx.Response), long_result
    assert long_result[0].status_code == 200 and long_result[0].json()["path"] == "/slow"
    assert tg.get("keep").status_code == 200
    log = tg.log_text()
    assert "unroute" in log.lower()
