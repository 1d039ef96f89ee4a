"""GitOps end to end: pushes to a watched bare repo drive a real `tidegate up` (reconciler + gateway).

One `up` process follows the branch through a story: create two services, roll one to a new env
value while a client hammers it through the gateway (no failed request), push a broken config (the
service keeps running, `ps` says why), delete one service's file (torn down, its processes gone),
then delete the last config (nothing is pruned without --allow-empty).
"""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest

from tests.e2e.helpers import Remote, Tidegate, replica_trees, service_yaml, wait_for

pytestmark = pytest.mark.slow


def state_of(tg: Tidegate, name: str) -> dict[str, Any] | None:
    return tg.ps().get(name)


def ready_at(tg: Tidegate, name: str, revision: str, count: int) -> bool:
    s = state_of(tg, name)
    return bool(
        s
        and s["revision"] == revision
        and s["ready"] == count
        and len(s["replicas"]) == count
        and all(r["phase"] == "ready" and r["current"] for r in s["replicas"])
    )


class Hammer(threading.Thread):
    """GETs a service through the gateway in a loop and records every outcome."""

    def __init__(self, tg: Tidegate, service: str) -> None:
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{tg.port}/services/{service}/"
        self.stop = threading.Event()
        self.greetings: list[str] = []
        self.failures: list[str] = []

    def run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                try:
                    r = client.get(self.url)
                    if r.status_code == 200:
                        self.greetings.append(r.json()["greeting"])
                    else:
                        self.failures.append(f"{r.status_code} {r.text[:200]}")
                except httpx.HTTPError as e:
                    self.failures.append(repr(e))


def test_push_update_break_delete_empty(remote: Remote, tidegate: Tidegate) -> None:
    tg = tidegate
    rev1 = remote.push(
        {"web.dstack.yml": service_yaml("web", 2, "v1"), "other/.dstack.yml": service_yaml("other", 1, "o")},
        "two services",
    )
    up = tg.up(remote.url)
    wait_for(lambda: ready_at(tg, "web", rev1, 2) and ready_at(tg, "other", rev1, 1), 90, "first deploy")
    assert tg.get("web").json()["greeting"] == "v1"
    assert tg.get("other").json()["greeting"] == "o"

    # Update: a rolling replacement, with a client going through the gateway the whole time.
    hammer = Hammer(tg, "web")
    hammer.start()
    wait_for(lambda: len(hammer.greetings) > 5, 30, "client traffic")
    rev2 = remote.push({"web.dstack.yml": service_yaml("web", 2, "v2")}, "web: new greeting")
    try:
        wait_for(lambda: ready_at(tg, "web", rev2, 2), 90, "rolled update")
        n = len(hammer.greetings)
        wait_for(lambda: len(hammer.greetings) > n + 5, 30, "traffic after the roll")
    finally:
        hammer.stop.set()
        hammer.join(15)
    assert hammer.failures == [], hammer.failures[:5]
    assert "v1" in hammer.greetings and hammer.greetings[-1] == "v2"
    first_v2 = hammer.greetings.index("v2")
    assert set(hammer.greetings[first_v2:]) <= {"v1", "v2"}

    # A broken config keeps the service at its last good revision and says why.
    rev3 = remote.push({"web.dstack.yml": service_yaml("web", 2, "v3") + "replicas_typo: 3\n"}, "broken")
    web = wait_for(lambda: (s := state_of(tg, "web")) and "error" in (s["reason"] or "") and s, 60, "error in ps")
    assert web["revision"] == rev2 and web["ready"] == 2
    assert tg.get("web").json()["greeting"] == "v2"
    assert tg.ps()["other"]["revision"] == rev3  # other services go on

    # Deleting a file tears that service down, processes included.
    other_ids = {r["id"] for r in tg.ps()["other"]["replicas"]}
    rev4 = remote.push({"other/.dstack.yml": None, "web.dstack.yml": service_yaml("web", 2, "v2")}, "drop other")
    wait_for(lambda: "other" not in tg.ps(), 60, "other deleted")
    wait_for(lambda: not (set(replica_trees(tg.state)) & other_ids), 30, "other's processes gone")
    assert ready_at(tg, "web", rev4, 2) or wait_for(lambda: ready_at(tg, "web", rev4, 2), 30, "web at rev4")

    # A commit with no configs at all prunes nothing (no --allow-empty).
    rev5 = remote.push({"web.dstack.yml": None}, "remove every config")
    wait_for(lambda: rev5 in tg.log_text() or tg.run("ps", "--json").stdout.count(rev5[:12]) > 0, 30, "rev5 seen")
    wait_for(lambda: "no services" in tg.log_text(), 30, "empty-commit warning")
    assert tg.ps()["web"]["ready"] == 2
    assert tg.get("web").json()["greeting"] == "v2"
    assert up.poll() is None
