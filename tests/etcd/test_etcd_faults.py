"""etcd members failing under a leader and a gateway: one member lost changes nothing; without quorum
no reconciler acts while the gateway keeps serving; with the members back everything converges."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.etcd.gateways import GatewayProc
from tests.etcd.test_gateway_feed import publish_routes, wait_until
from tests.etcd.test_leader import Contender
from tests.support.etcd_cluster import EtcdCluster

pytestmark = pytest.mark.slow


def events(c: Contender, kind: str, after: float) -> list[dict[str, Any]]:
    c.drain()
    return [e for e in c.seen if e["event"] == kind and e["at"] > after]


def test_member_loss_quorum_loss_and_recovery(own_etcd_cluster: EtcdCluster, tmp_path: Path) -> None:
    cluster = own_etcd_cluster
    url = cluster.url("faults")
    publish_routes(url, 1)
    a = Contender(url, "a", ttl=5)  # the production lease: a raft election after a member dies fits in it
    gw = GatewayProc(url, tmp_path / "gw", tmp_path / "gw.log")
    try:
        a.wait_for("wrote", 20)
        gw.wait_ready()
        wait_until(lambda: gw.health().get("routes_serial") == 1, 10)

        # One member down, the raft leader itself: the leader keeps leading and writing, routes flow.
        first = cluster.raft_leader()
        cluster.kill(first)
        lost_one = time.time()
        time.sleep(4)
        assert not events(a, "standby", lost_one), "the leader stepped down when one member of three died"
        assert events(a, "wrote", lost_one + 3), "the leader stopped writing"
        publish_routes(url, 2)
        wait_until(lambda: gw.health().get("routes_serial") == 2, 5)
        assert gw.health()["status"] == "ok"

        # Two of three down: no quorum. The leader stops acting; the gateway serves what it had.
        second = (first + 1) % 3
        cluster.kill(second)
        no_quorum = time.time()
        a.wait_for("standby", 15)
        settled = time.time()
        time.sleep(3)
        assert not events(a, "wrote", settled), "a reconciler wrote without quorum"
        assert not events(a, "leading", no_quorum), "a reconciler led without quorum"
        wait_until(lambda: gw.health()["status"] == "degraded", 15, step=0.2)
        assert gw.health()["routes_serial"] == 2

        # Members back: a leader again, writes resume, routes flow, the gateway is healthy.
        cluster.start(first)
        cluster.start(second)
        cluster.wait_healthy()
        back = time.time()
        a.wait_for("leading", 20)
        a.wait_for("wrote", 10)
        publish_routes(url, 3)
        wait_until(lambda: gw.health().get("routes_serial") == 3, 10)
        wait_until(lambda: gw.health()["status"] == "ok", 10, step=0.2)
        assert back > no_quorum
    finally:
        gw.close()
        a.close()
