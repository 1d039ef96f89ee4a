#!/usr/bin/env python3
"""Tunnel benchmark: what the SSH tunnel to a cloud replica costs, measured on loopback.

A tiny raw-asyncio HTTP/1.1 server (keep-alive, 2-byte body, or a 256 KiB body) stands in for the
replica's service; a real sshd on 127.0.0.1 is configured from the user data tidegate renders for
it (tests/support/sshd.py, so this needs root and Debian's openssh-server). The same keep-alive
client then measures, sequentially, per-request latency direct to the service over TCP and through
the tunnel's unix socket, and the throughput at 16 concurrent connections. Also: how long the
first SSH connection takes (handshake + auth). The numbers are loopback numbers: on a real cloud
path the network round trip dominates and the tunnel adds its CPU cost only.

    sudo .venv/bin/python bench/tunnel.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backends.cloud.tunnels import Backoff, CloudTunnels
from tests.support.sshd import FakeInstance

BIG = 256 * 1024


async def serve() -> None:
    small = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    big = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG + b"x" * BIG

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                writer.write(big if head.startswith(b"GET /big") else small)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


def run_server() -> tuple[int, subprocess.Popen[str]]:
    """The stand-in service in its own process (sharing the GIL with the client would skew it)."""
    proc = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return int(proc.stdout.readline()), proc


def sshd_cpu(instance: FakeInstance) -> float:
    """CPU seconds of the instance's sshd and its per-connection children."""
    assert instance.sshd.proc is not None
    root = psutil.Process(instance.sshd.proc.pid)
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def latencies(client: httpx.Client, base: str, path: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        r = client.get(base + path)
        r.read()
        out.append((time.perf_counter() - t) * 1000)
    return out


async def throughput(transport: httpx.AsyncBaseTransport | None, base: str, seconds: float) -> float:
    done = 0
    deadline = time.perf_counter() + seconds

    async with httpx.AsyncClient(transport=transport, limits=httpx.Limits(max_connections=16)) as client:

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                (await client.get(base + "/")).read()
                done += 1

        await asyncio.gather(*(worker() for _ in range(16)))
    return done / seconds


def pct(values: list[float], p: float) -> float:
    return sorted(values)[min(len(values) - 1, int(len(values) * p))]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(serve())
        return 0
    port, server = run_server()
    with tempfile.TemporaryDirectory(prefix="tg-tunnel-bench-") as tmp:
        tunnels = CloudTunnels(Path(tmp) / "state", "aws", active=True, backoff=Backoff(0.05, 0.5))
        instance = FakeInstance(tunnels, port, Path(tmp) / "instance")
        try:
            target = instance.target()
            t0 = time.perf_counter()
            tunnels.open(target)
            sock = str(tunnels.socket(target.replica_id))
            while not (st := tunnels.status(target.replica_id)) or not st.connected:
                time.sleep(0.001)
            connect_ms = (time.perf_counter() - t0) * 1000
            rows = []
            for name, transport, base in [
                ("direct TCP", None, f"http://127.0.0.1:{port}"),
                ("SSH tunnel", httpx.HTTPTransport(uds=sock), "http://replica"),
            ]:
                with httpx.Client(transport=transport) as c:
                    latencies(c, base, "/", 200)  # warm up
                    cpu0, ssh0 = time.process_time(), sshd_cpu(instance)
                    small = latencies(c, base, "/", args.requests)
                    cpu_small = (time.process_time() - cpu0) / args.requests * 1e6
                    ssh_small = (sshd_cpu(instance) - ssh0) / args.requests * 1e6
                    big = latencies(c, base, "/big", max(50, args.requests // 10))
                atransport = httpx.AsyncHTTPTransport(uds=sock) if transport is not None else None
                rps = asyncio.run(throughput(atransport, base, args.seconds))
                rows.append((name, small, big, rps, cpu_small, ssh_small))
            print(f"first SSH connection (TCP + handshake + auth): {connect_ms:.1f} ms")
            print(
                f"{'path':<12} {'2 B p50':>9} {'p99':>8} {'256 KiB p50':>12} {'p99':>8} {'req/s @16':>10}"
                f" {'CPU/req here':>13} {'sshd CPU/req':>13}"
            )
            for name, small, big, rps, cpu, ssh in rows:
                print(
                    f"{name:<12} {statistics.median(small):>7.3f}ms {pct(small, 0.99):>6.3f}ms "
                    f"{statistics.median(big):>10.3f}ms {pct(big, 0.99):>6.3f}ms {rps:>10.0f}"
                    f" {cpu:>11.0f}us {ssh:>11.0f}us"
                )
            print("CPU/req here: client + tunnel (this process, 2 B requests); sshd: the instance side")
        finally:
            tunnels.shutdown()
            instance.sshd.close()
            server.terminate()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
