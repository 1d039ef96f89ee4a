"""Autoscaling end to end: a real `tidegate up` scales a local service on the gateway's request rate.

The service has `replicas: 1..3`, a target of 1 rps per replica over the 30 s window and 2 s
delays. A client sends a bounded stream of requests through the gateway (Host header), which drives
it from 1 to 3 replicas; when the stream stops, slow requests keep every replica busy while the
rate falls and it scales back to 1. Each replica chosen for removal is drained, not killed: the
slow request in flight on it finishes with 200. `tidegate ps --json` (polled throughout, and its
`scaling_history`) carries every decision with its reason: the rps seen, the target, the delay.
"""

from __future__ import annotations

import itertools
import json
import re
import textwrap
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.e2e.helpers import SLOW_APP, Remote, Tidegate, replica_trees, wait_for

pytestmark = pytest.mark.slow

SERVICE = textwrap.dedent(
    """\
    type: service
    name: web
    commands:
      - python3 app.py 8000
    port: 8000
    auth: false
    backends: [local]
    resources:
      cpu: 1..
      memory: 64MB..
      disk: 1GB..
    replicas: 1..3
    scaling:
      metric: rps
      target: 1
      scale_up_delay: 2s
      scale_down_delay: 2s
      window: 30
    """
)

SLOW_SECONDS = 4.0
SLOW_CLIENTS = 3  # one per replica (least outstanding requests): every replica has one in flight
DECISION = re.compile(r"^(\d+) -> (\d+): ")


@dataclass
class Served:
    replica: str
    status: int
    started: float
    ended: float


@dataclass(eq=False)
class Client(threading.Thread):
    """GETs `path` through the gateway by Host header in a loop, `pause` apart, at most `limit` times."""

    port: int
    path: str
    pause: float = 0.0
    limit: int = 10_000
    served: list[Served] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    halt: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        super().__init__(daemon=True)

    def run(self) -> None:
        url = f"http://127.0.0.1:{self.port}{self.path}"
        with httpx.Client(timeout=30, headers={"Host": "web.localhost"}) as client:
            for _ in range(self.limit):
                if self.halt.is_set():
                    return
                started = time.time()
                try:
                    r = client.get(url)
                    replica = r.json()["replica"] if r.status_code == 200 else ""
                    self.served.append(Served(replica, r.status_code, started, time.time()))
                except (httpx.HTTPError, ValueError) as e:
                    self.errors.append(repr(e))
                self.halt.wait(self.pause)

    def finish(self) -> None:
        self.halt.set()
        self.join(60)


class Watcher:
    """Polls `tidegate ps --json` and keeps every distinct scaling decision it shows, in order."""

    def __init__(self, tg: Tidegate) -> None:
        self.tg = tg
        self.decisions: list[str] = []

    def look(self) -> dict[str, Any] | None:
        s = self.tg.ps().get("web")
        if s and s["scaling"] and (not self.decisions or self.decisions[-1] != s["scaling"]):
            self.decisions.append(s["scaling"])
        return s

    def until(self, what: str, check: Any, timeout: float = 60) -> dict[str, Any]:
        return wait_for(lambda: (s := self.look()) is not None and check(s) and s, timeout, what)  # type: ignore[no-any-return]


def settled(count: int) -> Any:
    return lambda s: (
        s["desired"] == count
        and s["ready"] == count
        and len(s["replicas"]) == count
        and all(r["phase"] == "ready" for r in s["replicas"])
    )


def test_load_scales_up_to_three_and_back_to_one_draining(remote: Remote, tidegate: Tidegate) -> None:
    tg = tidegate
    remote.push({"app.py": SLOW_APP, ".dstack.yml": SERVICE}, "autoscaled web")
    tg.up(remote.url)
    ps = Watcher(tg)
    ps.until("one ready replica", settled(1))

    # Load: a bounded burst of 75 requests from 3 clients, 2.5 rps over the 30 s window (2.5x the
    # target): the autoscaler asks for 3 replicas.
    load = [Client(tg.port, "/", limit=25) for _ in range(3)]
    for c in load:
        c.start()
    try:
        ps.until("a scale up to 3", lambda s: s["desired"] == 3, 45)
    finally:
        for c in load:
            c.finish()
    assert not [e for c in load for e in c.errors]
    assert [s.status for c in load for s in c.served] == [200] * 75
    ps.until("three ready replicas", settled(3), 30)

    # The burst ages out of the window; slow requests keep each replica busy meanwhile (0.75 rps
    # in all, under the target of 1, so they alone want one replica).
    slow = [Client(tg.port, f"/slow?s={SLOW_SECONDS:g}") for _ in range(SLOW_CLIENTS)]
    for c in slow:
        c.start()
    try:
        final = ps.until("a scale down to 1", settled(1), 60)
    finally:
        for c in slow:
            c.finish()

    # ps showed each decision with its reason: the rps seen, the target and the delay.
    steps = [(int(m[1]), int(m[2])) for m in map(DECISION.match, ps.decisions) if m]
    assert steps and steps[-1][1] == 1 and max(n for _, n in steps) == 3, ps.decisions
    ups = [d for d in ps.decisions if ": scale up " in d]
    downs = [d for d in ps.decisions if ": scale down " in d]
    assert ups and downs, ps.decisions
    for d in ups:
        # A step this steep (0 -> 5 rps against a target of 1) scales in panic mode (6 s window,
        # no delay); a gentler rise goes through the stable window and scale_up_delay.
        stable = "over 30s, target 1/replica" in d and "scale_up_delay 2s" in d
        panic = "panic: scale up" in d and "over 6s >= 2x target 1" in d and "scale_up_delay skipped" in d
        assert stable or panic, d
    for d in downs:
        assert "over 30s, target 1/replica" in d and "scale_down_delay 2s" in d, d
    assert final["scaling"].endswith(downs[-1].partition(": ")[2]), final

    # ps --json keeps the whole chain: started at the minimum, up to 3, back down to 1.
    history = final["scaling_history"]
    assert history[0] == "0 -> 1: new service: start at the minimum of 1..3", history
    chain = [(int(m[1]), int(m[2])) for m in map(DECISION.match, history) if m]
    assert all(a[1] == b[0] for a, b in itertools.pairwise(chain)), history
    assert max(c[1] for c in chain) == 3 and chain[-1] == (chain[-1][0], 1), history
    assert set(ps.decisions) <= set(history), (ps.decisions, history)
    rec = json.loads((tg.state / "state.json").read_text())["services"]["web"]

    # Drained, not killed: every slow request succeeded, and a replica removed by the scale down
    # was still answering one that was in flight when its drain began.
    served = [s for c in slow for s in c.served]
    assert not [e for c in slow for e in c.errors] and all(s.status == 200 for s in served)

    def events(kind: str) -> dict[str, float]:
        return {e["detail"].split()[0]: e["at"] for e in rec["history"] if e["event"] == kind}

    drained, removed = events("replica draining"), events("replica removed")
    assert len(drained) == 2 and set(removed) == set(drained), rec["history"]
    assert set(drained).isdisjoint(r["id"] for r in final["replicas"])
    caught = [s for s in served if s.replica in drained and s.started < drained[s.replica] < s.ended]
    assert caught, (drained, served)
    # ... and it was stopped only after that request had been answered.
    assert all(removed[s.replica] >= s.ended for s in caught), (removed, caught)
    wait_for(lambda: len(replica_trees(tg.state)) == 1, 20, "the drained replicas' processes to end")
