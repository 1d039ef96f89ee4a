"""Gateways fed from etcd: routes and tokens by watch, last known state served while etcd is away."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reconciler.state.etcd_store import EtcdStore
from tests.etcd.gateways import GatewayProc, tidegate
from tests.support.etcd_cluster import EtcdCluster
from tidegate.etcd import EtcdClient, EtcdLocation
from tidegate.routes import RoutesSnapshot


def wait_until(check: Callable[[], bool], timeout: float, step: float = 0.01) -> float:
    """Seconds until `check()` held; fails after `timeout`."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout}s")
        time.sleep(step)
    return time.monotonic() - start


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[Callable[[str, int], list[GatewayProc]]]:
    made: list[GatewayProc] = []

    def start(url: str, n: int) -> list[GatewayProc]:
        procs = [
            GatewayProc(url, tmp_path / f"gw{len(made) + i}", tmp_path / f"gw{len(made) + i}.log")
            for i in range(n)
        ]
        for p in procs:
            p.wait_ready()
        made.extend(procs)
        return procs

    yield start
    for p in made:
        p.close()


def publish_routes(url: str, serial: int) -> None:
    EtcdStore(EtcdClient(EtcdLocation.parse(url))).put(
        "routes.json", RoutesSnapshot(serial=serial, domain="localhost").model_dump_json().encode()
    )


def test_routes_reach_every_gateway_within_a_second(
    etcd_cluster: EtcdCluster, gateways: Callable[..., list[GatewayProc]]
) -> None:
    url = etcd_cluster.url()
    publish_routes(url, 1)
    gws = gateways(url, 2)
    for gw in gws:
        wait_until(lambda gw=gw: gw.health().get("routes_serial") == 1, 10)
        assert gw.health()["status"] == "ok"
    for serial in (2, 3, 4):
        publish_routes(url, serial)
        took = [wait_until(lambda gw=gw, s=serial: gw.health().get("routes_serial") == s, 5) for gw in gws]
        assert max(took) < 1.0, f"routes took {took}"


@pytest.mark.slow  # four `tidegate token` processes and two gateways: ~20 s on 2 cores
def test_a_token_revoked_through_one_machine_is_refused_by_every_gateway(
    etcd_cluster: EtcdCluster, gateways: Callable[..., list[GatewayProc]]
) -> None:
    url = etcd_cluster.url()
    created = tidegate("token", "create", "ci", "--state", url)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    keep = tidegate("token", "create", "other", "--state", url).stdout.strip()
    gws = gateways(url, 2)
    for gw in gws:
        wait_until(lambda gw=gw: gw.models(token) == 200, 10)
    listed = tidegate("token", "list", "--state", url)
    assert "ci\t" in listed.stdout and "other\t" in listed.stdout
    revoked = tidegate("token", "revoke", "ci", "--state", url)
    assert revoked.returncode == 0, revoked.stderr
    done = time.monotonic()
    for gw in gws:
        wait_until(lambda gw=gw: gw.models(token) == 403, 5)
    assert time.monotonic() - done < 1.0 + 0.2 * len(gws)  # the request round trips included
    assert all(gw.models(keep) == 200 for gw in gws)


@pytest.mark.slow
def test_etcd_away_the_gateway_serves_its_last_tokens_degraded_and_honours_a_revocation_once_back(
    own_etcd_cluster: EtcdCluster, gateways: Callable[..., list[GatewayProc]]
) -> None:
    cluster = own_etcd_cluster
    prefix = "drill"
    url = cluster.url(prefix)
    only_m0 = f"etcd://127.0.0.1:{cluster.client_ports[0]}/{prefix}"  # this gateway reaches one member
    token = tidegate("token", "create", "ci", "--state", url).stdout.strip()
    publish_routes(url, 7)
    (gw,) = gateways(only_m0, 1)
    wait_until(lambda: gw.models(token) == 200, 10)
    cluster.pause(0)
    try:
        wait_until(lambda: gw.health()["status"] == "degraded", 15, step=0.2)
        assert gw.health()["routes_serial"] == 7
        assert gw.models(token) == 200  # last known tokens keep serving
        via_others = (
            f"etcd://127.0.0.1:{cluster.client_ports[1]},127.0.0.1:{cluster.client_ports[2]}/{prefix}"
        )
        revoked = tidegate("token", "revoke", "ci", "--state", via_others)
        assert revoked.returncode == 0, revoked.stderr
    finally:
        cluster.resume(0)
    wait_until(lambda: gw.models(token) == 403, 20, step=0.05)
    wait_until(lambda: gw.health()["status"] == "ok", 10, step=0.2)
