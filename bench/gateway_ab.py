#!/usr/bin/env python3
"""Paired A/B of two source trees' gateways: one worker each, one upstream, alternating short wrk runs.

On a shared machine a before/after pair of `bench/gateway.py` runs minutes apart measures the
neighbours as much as the change; alternating 3-s runs of both gateways, many rounds, and taking
medians of req/s and of the proxy's CPU per request compares them under the same load.

    .venv/bin/python bench/gateway_ab.py BEFORE_TREE AFTER_TREE [--rounds 10] [--connections 32]

(e.g. BEFORE_TREE from `git worktree add --detach /tmp/gw-base main`). Needs wrk.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gateway import CHAT_REQUEST, free_port, wait_port  # noqa: E402

# Writes a one-service routes.json and prints a token, with whichever module layout the tree has.
SETUP = """
import sys
from pathlib import Path
try:
    from tidegate.routes import RoutesSnapshot, ServiceRoute, Upstream
    from tidegate.routes_io import write_snapshot
except ImportError:  # a tree from before the package restructure (names split: see below)
    import importlib
    old = importlib.import_module("gateway" + ".snapshot")
    RoutesSnapshot, ServiceRoute, Upstream, write_snapshot = old.RoutesSnapshot, old.ServiceRoute, old.Upstream, old.write_snapshot
try:
    from gateway.access.tokens import create_token
except ImportError:
    from gateway.tokens import create_token
state, port = Path(sys.argv[1]), sys.argv[2]
up = Upstream(replica_id="b-0", url=f"http://127.0.0.1:{port}")
write_snapshot(state, RoutesSnapshot(serial=1, services={"bench": ServiceRoute(name="bench", host="bench.localhost", upstreams=(up,))}))
print(create_token(state, "bench"))
"""


def start(tree: Path, state: Path, upstream_port: int) -> tuple[subprocess.Popen[bytes], int, str]:
    token = subprocess.run([sys.executable, "-c", SETUP, str(state), str(upstream_port)], cwd=tree,
                           capture_output=True, text=True, check=True).stdout.strip()
    port = free_port()
    # A tree from before the package restructure runs its CLI as the module `reconciler.cli`.
    module = "reconciler.cli.main" if (tree / "reconciler" / "cli" / "main.py").exists() else "reconciler.cli"
    proc = subprocess.Popen([sys.executable, "-m", module, "gateway", "--state", str(state), "--listen", f"127.0.0.1:{port}",
                             "--no-access-log"], cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    time.sleep(0.5)
    return proc, port, token


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tidegate-ab-"))
    up_port = free_port()
    upstream = subprocess.Popen([sys.executable, str(ROOT / "bench" / "gateway.py"), "--upstream", str(up_port)])
    wait_port(up_port)
    targets = {name: start(tree.resolve(), work / name, up_port) for name, tree in (("before", args.before), ("after", args.after))}
    script = work / "post.lua"
    script.write_text('wrk.method = "POST"\nwrk.body = ' + json.dumps(CHAT_REQUEST) + '\nwrk.headers["Content-Type"] = "application/json"\n')
    results: dict[tuple[str, str], list[tuple[float, float]]] = {(t, k): [] for t in targets for k in ("GET", "chat POST")}
    load0 = os.getloadavg()[0]
    try:
        for r in range(args.rounds):
            for name in list(targets) if r % 2 == 0 else list(reversed(targets)):
                proc, port, token = targets[name]
                for kind in ("GET", "chat POST"):
                    cmd = ["wrk", "-t1", f"-c{args.connections}", "-d3s", "-H", "Host: bench.localhost", "-H", f"Authorization: Bearer {token}"]
                    url = f"http://127.0.0.1:{port}/"
                    if kind == "chat POST":
                        cmd += ["-s", str(script)]
                        url += "v1/chat/completions"
                    p = psutil.Process(proc.pid)
                    before = sum(p.cpu_times()[:2])
                    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
                    cpu = sum(p.cpu_times()[:2]) - before
                    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
                    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
                    results[(name, kind)].append((rps, cpu / total * 1e6))
    finally:
        for proc, _, _ in targets.values():
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
        upstream.terminate()
        upstream.wait(5)
    print(f"load average {load0:.1f} -> {os.getloadavg()[0]:.1f}; {args.rounds} rounds, {args.connections} connections, 1 worker")
    for kind in ("GET", "chat POST"):
        for name in targets:
            runs = results[(name, kind)]
            print(f"{name:6} {kind:9} req/s median {statistics.median(r[0] for r in runs):7.0f}   "
                  f"CPU/req median {statistics.median(r[1] for r in runs):5.0f} us   "
                  f"(req/s runs: {' '.join(f'{r[0]:.0f}' for r in runs)})")


if __name__ == "__main__":
    main()
