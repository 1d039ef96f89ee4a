"""A `tidegate gateway --state etcd://…` on another machine than the leader, serving a cloud replica
through its own SSH tunnel, measured (not a test). Needs root (sshd's privilege separation).

A real 3-member etcd on loopback, a real sshd configured from a replica's user data in front of a
small HTTP server (tests/support/sshd.py), one gateway process with the installation's key copied.

- first request: a route to a new cloud replica is published on etcd; time until the remote
  gateway answers 200 through the tunnel it opens for it (watch + SSH handshake + request).
  Baseline in the same run: a route to a plain HTTP upstream, time until the same gateway answers.
- per request: GET through the gateway, tunnel vs the plain upstream (median of --requests).

Usage: sudo .venv/bin/python bench/remote_gateway_tunnel.py [--runs 5] [--requests 300]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backends.cloud.tunnels import CloudTunnels  # noqa: E402
from reconciler.cli import tunnel_keys  # noqa: E402
from tests.etcd.gateways import GatewayProc  # noqa: E402
from tests.etcd.test_gateway_tunnels import publish  # noqa: E402
from tests.support.etcd_cluster import EtcdCluster  # noqa: E402
from tests.support.sshd import FakeInstance  # noqa: E402
from tidegate.etcd import EtcdClient, EtcdLocation  # noqa: E402
from tidegate.routes import TunnelRoute, Upstream  # noqa: E402


def serve_hello(body: bytes) -> tuple[int, object]:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Hello(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body leave in separate writes

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return int(server.server_address[1]), server


def until_200(client: httpx.Client, body: bytes, timeout: float = 30.0) -> float:
    """Until the new upstream answers (the previous one keeps answering until the routes arrive)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            r = client.get("/")
            if r.status_code == 200 and r.content == body:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.01)
    raise SystemExit("the gateway never answered 200")


def per_request(client: httpx.Client, n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        assert client.get("/").status_code == 200
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    port, _plain = serve_hello(b"plain")
    instance_port, _instance = serve_hello(b"instance")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cluster = EtcdCluster(folder / "etcd")
        (folder / "etcd").mkdir()
        cluster.start()
        url = cluster.url("bench")
        location = EtcdLocation.parse(url)
        leader = folder / "leader"
        tunnel_keys.check(EtcdClient(location), location, leader / "ssh", lead=True)
        local = folder / "remote"
        (local / "ssh").mkdir(parents=True, mode=0o700)
        shutil.copy2(leader / "ssh" / "id_ed25519", local / "ssh" / "id_ed25519")
        gw = GatewayProc(url, local, folder / "gw.log")
        instances: list[FakeInstance] = []
        first_tunnel, first_plain, req_tunnel, req_plain = [], [], [], []
        try:
            gw.wait_ready()
            client = httpx.Client(base_url=gw.base, headers={"Host": "llm.localhost"}, timeout=10)
            for run in range(args.runs):
                plain = Upstream(replica_id=f"plain-{run}", url=f"http://127.0.0.1:{port}")
                publish(url, 100 + 2 * run, plain)
                first_plain.append(until_200(client, b"plain"))
                req_plain.append(per_request(client, args.requests))
                inst = FakeInstance(CloudTunnels(leader, "aws"), instance_port, folder / f"instance-{run}", label=f"bench:{run}")
                instances.append(inst)
                t = inst.target()
                tunnel = TunnelRoute(backend="aws", host=t.host, port=t.port, user=t.user, host_key=t.host_key,
                                     service_port=t.service_port)  # fmt: skip
                publish(url, 101 + 2 * run, Upstream(replica_id=f"llm-{run}", url="unix:///leader.sock", tunnel=tunnel))
                first_tunnel.append(until_200(client, b"instance"))
                req_tunnel.append(per_request(client, args.requests))
        finally:
            gw.close()
            for inst in instances:
                inst.sshd.close()
            cluster.close()
    ms = 1000
    print(f"\nremote gateway, its own tunnel ({args.runs} runs, {args.requests} requests each; median)")
    print(f"{'metric':<44} {'tunnel':>10} {'plain upstream (baseline)':>27}")
    print(f"{'route published -> first 200':<44} {statistics.median(first_tunnel) * ms:>8.1f}ms "
          f"{statistics.median(first_plain) * ms:>25.1f}ms")  # fmt: skip
    print(f"{'per request through the gateway':<44} {statistics.median(req_tunnel) * ms:>8.2f}ms "
          f"{statistics.median(req_plain) * ms:>25.2f}ms")  # fmt: skip


if __name__ == "__main__":
    main()
