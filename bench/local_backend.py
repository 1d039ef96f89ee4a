"""Local backend numbers: create() latency, create-to-answer latency, supervisor memory, and the
cost of the replica sandbox side by side.

Run: `.venv/bin/python bench/local_backend.py [--runs N]` (network modes, interpreters) and
`.venv/bin/python bench/local_backend.py --sandbox [--runs N] [--requests M]` (the bubblewrap sandbox
vs no sandbox, both in their own network namespace, as root). Starts a tiny stdlib HTTP service as
replicas on port 8000 (each in its own network namespace when available), times `create()` and
the first successful HTTP GET through the replica's unix socket, and reports the resident memory
of the per-replica supervisor (relay + log pump) next to that of the service itself. With
`--sandbox` it also times M sequential GETs through each replica's socket (a new connection each,
as the stdlib server closes them) and prints one table.
"""

from __future__ import annotations

import argparse
import logging
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backends.base import ReplicaSpec
from backends.local.backend import LocalBackend, NetworkMode, SandboxMode

APP = """
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a): pass
import sys
HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def answers(address: str) -> bool:
    transport = httpx.HTTPTransport(uds=address.removeprefix("unix://"))
    try:
        with httpx.Client(transport=transport, timeout=2) as c:
            return c.get("http://replica/").status_code == 200
    except httpx.TransportError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run(network: NetworkMode, runs: int, python: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        repo.mkdir()
        (repo / "app.py").write_text(APP)
        backend = LocalBackend(root=Path(tmp) / "replicas", owner="bench", grace=2.0, network=network)
        create_s, ready_s, relay_rss, relay_uss, app_rss = [], [], [], [], []
        # Namespaces let every replica use 8000; the shared host network needs a free port.
        port = 8000 if network == NetworkMode.NAMESPACE else free_port()
        for i in range(runs):
            spec = ReplicaSpec(
                replica_id=f"bench-0000000{i % 10}-{i}",
                service="bench",
                spec_hash="00000000",
                ordinal=i,
                port=port,
                commands=(f"exec {python} app.py {port}",),
                workdir=str(repo),
            )
            t0 = time.perf_counter()
            info = backend.create(spec)
            t1 = time.perf_counter()
            assert info.address is not None
            while not answers(info.address):
                time.sleep(0.005)
            t2 = time.perf_counter()
            create_s.append(t1 - t0)
            ready_s.append(t2 - t0)
            relay = psutil.Process(int(str(info.handle).split(":")[0]))
            relay_rss.append(relay.memory_info().rss / 2**20)
            relay_uss.append(relay.memory_full_info().uss / 2**20)
            app_rss.append(sum(c.memory_info().rss for c in relay.children(recursive=True)) / 2**20)
            backend.delete(spec.replica_id)
        med = statistics.median
        print(
            f"{network.value:9s} {python:>16s} runs={runs}  create() {med(create_s) * 1000:6.0f} ms   "
            f"create->answers {med(ready_s) * 1000:6.0f} ms   "
            f"supervisor RSS {med(relay_rss):5.1f} MiB (USS {med(relay_uss):4.1f} MiB)   "
            f"service RSS {med(app_rss):5.1f} MiB"
        )


def request_latencies(address: str, n: int) -> list[float]:
    transport = httpx.HTTPTransport(uds=address.removeprefix("unix://"))
    out = []
    with httpx.Client(transport=transport, timeout=5) as c:
        c.get("http://replica/")  # warm
        for _ in range(n):
            t0 = time.perf_counter()
            assert c.get("http://replica/").status_code == 200
            out.append(time.perf_counter() - t0)
    return out


def sandbox_row(sandbox: SandboxMode, runs: int, requests: int) -> list[str]:
    python = "/usr/bin/python3"  # inside the sandbox only /usr (and the venv's base) exist
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        repo.mkdir()
        (repo / "app.py").write_text(APP)
        backend = LocalBackend(
            root=Path(tmp) / "replicas", owner="bench", grace=2.0, network=NetworkMode.NAMESPACE, sandbox=sandbox
        )
        if sandbox != SandboxMode.OFF and backend.sandbox_unavailable():
            raise SystemExit(f"no sandbox here: {backend.sandbox_unavailable()}")
        create_s, ready_s, lat, app_rss = [], [], [], []
        for i in range(runs):
            spec = ReplicaSpec(
                replica_id=f"bench-0000000{i % 10}-{i}", service="bench", spec_hash="00000000", ordinal=i,
                port=8000, commands=(f"exec {python} app.py 8000",), workdir=str(repo), trusted=True,
            )  # fmt: skip
            t0 = time.perf_counter()
            info = backend.create(spec)
            t1 = time.perf_counter()
            assert info.address is not None
            while not answers(info.address):
                time.sleep(0.005)
            t2 = time.perf_counter()
            create_s.append(t1 - t0)
            ready_s.append(t2 - t0)
            lat += request_latencies(info.address, requests)
            relay = psutil.Process(int(str(info.handle).split(":")[0]))
            app_rss.append(sum(c.memory_info().rss for c in relay.children(recursive=True)) / 2**20)
            backend.delete(spec.replica_id)
        med = statistics.median
        lat.sort()
        return [
            "bwrap sandbox" if sandbox != SandboxMode.OFF else "no sandbox",
            f"{med(create_s) * 1000:.0f}",
            f"{med(ready_s) * 1000:.0f}",
            f"{med(lat) * 1e6:.0f}",
            f"{lat[int(len(lat) * 0.95)] * 1e6:.0f}",
            f"{med(app_rss):.1f}",
        ]


def compare_sandbox(runs: int, requests: int) -> None:
    headers = ["replica", "create() ms", "create->answers ms", "GET p50 us", "GET p95 us", "tree RSS MiB"]
    rows = []
    # Interleaved, so a noisy neighbour on the machine hits both columns alike.
    for _ in range(2):
        for mode in (SandboxMode.OFF, SandboxMode.REQUIRED):
            rows.append(sandbox_row(mode, max(1, runs // 2), requests))
    merged = []
    for label in ("no sandbox", "bwrap sandbox"):
        mine = [r for r in rows if r[0] == label]
        merged.append([label] + [f"{statistics.median(float(r[i]) for r in mine):g}" for i in range(1, len(headers))])
    widths = [max(len(h), *(len(r[i]) for r in merged)) for i, h in enumerate(headers)]
    print(f"runs={runs} requests/replica={requests} (medians of two interleaved halves)")
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    for r in merged:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--sandbox", action="store_true", help="compare the bubblewrap sandbox with none")
    parser.add_argument("--requests", type=int, default=200, help="GETs per replica with --sandbox")
    args = parser.parse_args()
    if args.sandbox:
        logging.getLogger("tidegate.local").setLevel(logging.ERROR)  # "runs WITHOUT the sandbox": on purpose
        compare_sandbox(args.runs, args.requests)
        return
    # `python3` through a pyenv shim costs ~0.3 s per start; the absolute path shows our overhead.
    for python in ("python3", sys.executable):
        for network in (NetworkMode.NAMESPACE, NetworkMode.SHARED):
            run(network, args.runs, python)


if __name__ == "__main__":
    main()
