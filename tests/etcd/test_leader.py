"""Leader election with an etcd lease, and the fence on the leader's writes (real processes, real etcd)."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from reconciler.state.etcd_store import EtcdStore, Fence, FencedOut
from reconciler.state.leader import Leadership
from tests.support.etcd_cluster import EtcdCluster
from tidegate.etcd import EtcdClient, EtcdLocation

ROOT = Path(__file__).resolve().parents[2]
TTL = 2


class Contender:
    """tests/etcd/leader_proc.py in a process of its own; its events read on a thread."""

    def __init__(self, url: str, node: str, ttl: int = TTL) -> None:
        self.node = node
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.etcd.leader_proc", url, node, str(ttl)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.put(json.loads(line))

    def wait_for(self, event: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"{self.node}: no {event!r} in {timeout}s; saw {[e['event'] for e in self.seen][-10:]}"
                )
            try:
                e = self.events.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(e)
            if e["event"] == event:
                return e

    def drain(self) -> list[dict[str, Any]]:
        out = []
        while True:
            try:
                out.append(self.events.get_nowait())
            except queue.Empty:
                self.seen += out
                return out

    def close(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def contenders() -> Any:
    made: list[Contender] = []
    yield made
    for c in made:
        c.close()


def client_for(url: str) -> EtcdClient:
    return EtcdClient(EtcdLocation.parse(url))


@pytest.mark.slow
def test_exactly_one_of_three_leads(etcd_cluster: EtcdCluster, contenders: list[Contender]) -> None:
    url = etcd_cluster.url()
    contenders += [Contender(url, f"n{i}") for i in range(3)]
    time.sleep(TTL + 1.0)
    leading = [c for c in contenders if any(e["event"] == "leading" for e in c.drain() + c.seen)]
    assert len(leading) == 1
    assert Leadership(client_for(url)).holder() == leading[0].node


@pytest.mark.slow
def test_kill_9_of_the_leader_a_standby_leads_within_10s(
    etcd_cluster: EtcdCluster, contenders: list[Contender]
) -> None:
    url = etcd_cluster.url()
    a = Contender(url, "a", ttl=5)  # the production lease
    contenders.append(a)
    a.wait_for("leading", 20)
    b = Contender(url, "b", ttl=5)
    contenders.append(b)
    b.wait_for("standby", 20)
    killed = time.time()
    a.proc.kill()
    took = b.wait_for("leading", 15)["at"] - killed
    assert took < 10.0, f"takeover took {took:.1f}s"


@pytest.mark.slow
def test_a_paused_leader_is_fenced_when_it_wakes_and_becomes_standby(
    etcd_cluster: EtcdCluster, contenders: list[Contender]
) -> None:
    url = etcd_cluster.url()
    kv = client_for(url)
    a = Contender(url, "a")
    contenders.append(a)
    a.wait_for("wrote", 20)
    b = Contender(url, "b")
    contenders.append(b)
    b.wait_for("standby", 20)
    os.kill(a.proc.pid, signal.SIGSTOP)
    a.drain()
    b.wait_for("leading", TTL + 10)
    key = EtcdLocation.parse(url).key("ticks/a")
    before = kv.get(key)
    assert before is not None
    os.kill(a.proc.pid, signal.SIGCONT)
    a.wait_for("standby", 10)  # it noticed, stopped acting, and campaigns again
    time.sleep(1.0)
    after = kv.get(key)
    assert after is not None and after.mod_revision == before.mod_revision, "the woken leader wrote"
    assert Leadership(kv).holder() == "b"


def test_a_stale_fence_refuses_every_write(etcd_cluster: EtcdCluster) -> None:
    url = etcd_cluster.url()
    kv = client_for(url)
    first = Leadership(kv, node="first", ttl=TTL)
    assert first.try_acquire()
    old = first.fence
    assert old is not None
    first.resign()
    second = Leadership(kv, node="second", ttl=TTL)
    assert second.try_acquire()
    try:
        stale = EtcdStore(kv, Fence(old.revision, old.lease))
        with pytest.raises(FencedOut):
            stale.put("state.json", b"from the old leader")
        with pytest.raises(FencedOut):
            stale.verify_fence()
        assert stale.create("installation.json", b"old") is False
        assert EtcdStore(kv).get("state.json") is None
        EtcdStore(kv, second.fence).put("state.json", b"from the leader")
        assert EtcdStore(kv).get("state.json") == b"from the leader"
    finally:
        second.resign()
