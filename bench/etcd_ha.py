"""Shared state on etcd, measured (not a test): route propagation to gateways and standby takeover.

A real 3-member etcd cluster on loopback ports (tests/support/etcd_cluster.py, Debian's etcd).

- route propagation: two `tidegate gateway --state etcd://…` processes; each run publishes a
  routes.json with a new serial on etcd (as a leading reconciler does) and times until both
  gateways' /healthz report that serial. Baseline in the same run: one `tidegate gateway --state
  DIR` and the file written into its directory (what one machine does today).
- standby takeover: two contenders (tests/etcd/leader_proc.py: the same Leadership and fenced
  store `tidegate up` uses, production lease of 5 s); kill -9 the leader, time until the standby
  leads. Baseline: the bound, lease TTL + campaign retry (etcd frees the key when the lease
  expires, TTL after the leader's last keepalive, which came up to TTL/3 before the kill).

Median of `--runs` (default 5). Usage: .venv/bin/python bench/etcd_ha.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reconciler.state.etcd_store import EtcdStore  # noqa: E402
from reconciler.state.leader import DEFAULT_RETRY, DEFAULT_TTL  # noqa: E402
from tests.etcd.gateways import GatewayProc  # noqa: E402
from tests.etcd.test_leader import Contender  # noqa: E402
from tests.support.etcd_cluster import EtcdCluster  # noqa: E402
from tidegate.etcd import EtcdClient, EtcdLocation  # noqa: E402
from tidegate.fsio import write_atomic  # noqa: E402
from tidegate.routes import RoutesSnapshot  # noqa: E402


def wait_serial(gateways: list[GatewayProc], serial: int, timeout: float = 10.0) -> float:
    start = time.monotonic()
    pending = list(gateways)
    while pending:
        pending = [g for g in pending if g.health().get("routes_serial") != serial]
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"serial {serial} not served within {timeout}s")
        if pending:
            time.sleep(0.005)
    return time.monotonic() - start


def routes_body(serial: int) -> bytes:
    return RoutesSnapshot(serial=serial, domain="localhost").model_dump_json().encode()


def bench_routes(cluster: EtcdCluster, folder: Path, runs: int) -> tuple[list[float], list[float]]:
    url = cluster.url("bench-routes")
    store = EtcdStore(EtcdClient(EtcdLocation.parse(url)))
    store.put("routes.json", routes_body(1))
    gws = [GatewayProc(url, folder / f"gw{i}", folder / f"gw{i}.log") for i in range(2)]
    plain_dir = folder / "plain"
    plain_dir.mkdir()
    write_atomic(plain_dir / "routes.json", routes_body(1))
    plain = GatewayProc(str(plain_dir), folder / "unused", folder / "plain.log")
    etcd_times: list[float] = []
    file_times: list[float] = []
    try:
        for g in [*gws, plain]:
            g.wait_ready()
        wait_serial([*gws, plain], 1)
        for run in range(runs):
            serial = 10 + run
            store.put("routes.json", routes_body(serial))
            etcd_times.append(wait_serial(gws, serial))
            write_atomic(plain_dir / "routes.json", routes_body(serial))
            file_times.append(wait_serial([plain], serial))
            time.sleep(0.3)
    finally:
        for g in [*gws, plain]:
            g.close()
    return etcd_times, file_times


def bench_takeover(cluster: EtcdCluster, runs: int) -> list[float]:
    times = []
    for run in range(runs):
        url = cluster.url(f"bench-takeover-{run}")
        a = Contender(url, "a", ttl=DEFAULT_TTL)
        b: Contender | None = None
        try:
            a.wait_for("leading", 30)
            b = Contender(url, "b", ttl=DEFAULT_TTL)
            b.wait_for("standby", 30)
            time.sleep(0.5)
            killed = time.time()
            a.proc.kill()
            times.append(b.wait_for("leading", 30)["at"] - killed)
        finally:
            a.close()
            if b is not None:
                b.close()
    return times


def row(name: str, values: list[float], baseline: str) -> str:
    return (
        f"{name:<34} {statistics.median(values):>9.3f} {min(values):>9.3f} {max(values):>9.3f}   {baseline}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tidegate-bench-etcd-") as tmp:
        folder = Path(tmp)
        (folder / "etcd").mkdir()
        cluster = EtcdCluster(folder / "etcd")
        cluster.start()
        try:
            cluster.wait_healthy()
            etcd_times, file_times = bench_routes(cluster, folder, args.runs)
            takeover = bench_takeover(cluster, args.runs)
        finally:
            cluster.close()
    print(f"\netcd HA (3-member etcd on loopback, {args.runs} runs; seconds)")
    print(f"{'metric':<34} {'median':>9} {'min':>9} {'max':>9}   baseline (same run)")
    print(row("routes -> 2 gateways via etcd", etcd_times, f"file -> 1 gateway: median {statistics.median(file_times):.3f}"))
    print(row("standby takeover after kill -9", takeover, f"bound: lease TTL {DEFAULT_TTL}s + retry {DEFAULT_RETRY}s"))


if __name__ == "__main__":
    main()
