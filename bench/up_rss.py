"""`tidegate up` resident memory with N services (not a test; issue 13's "RSS < 150 MB" target).

A bare git repo with N services at zero replicas (`replicas: 0..1`, rps scaling), so no replica
process is started and what is measured is the control plane (source, config, engine, state,
routes) and the gateway it runs. Waits until routes.json lists all N services, lets one more pass
run, then reports the RSS of `up` and of its whole process tree (the gateway's workers included).

Usage: .venv/bin/python bench/up_rss.py [--services 1000] [--root /path/to/other/checkout]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
SERVICE = """\
type: service
name: {name}
commands:
  - python3 -m http.server 8000
port: 8000
auth: false
backends: [local]
replicas: 0..1
scaling:
  metric: rps
  target: 5
"""


def git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=b", "-c", "user.email=b@b", *args], cwd=cwd, check=True, capture_output=True
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def routed(state: Path) -> int:
    try:
        return len(json.loads((state / "routes.json").read_bytes()).get("services", {}))
    except (OSError, ValueError):
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument(
        "--root", type=Path, default=ROOT, help="checkout whose code runs (e.g. main, for a before)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        bare, work, state = base / "remote.git", base / "work", base / "state"
        bare.mkdir()
        git(bare, "init", "-q", "--bare", "-b", "main")
        work.mkdir()
        git(work, "init", "-q", "-b", "main")
        for i in range(args.services):
            d = work / f"svc-{i:05d}"
            d.mkdir()
            (d / ".dstack.yml").write_text(SERVICE.format(name=f"svc-{i:05d}"))
        git(work, "add", "-A")
        git(work, "commit", "-qm", "services")
        git(work, "remote", "add", "origin", str(bare))
        git(work, "push", "-q", "origin", "main")
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIDEGATE_")}
        cmd = [sys.executable, "-m", "reconciler.cli.main", "up", "--repo", f"file://{bare}", "--state", str(state),
               "--listen", f"127.0.0.1:{free_port()}", "--interval", "5"]  # fmt: skip
        up = subprocess.Popen(
            cmd, cwd=args.root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            t0 = time.monotonic()
            while routed(state) < args.services:
                if time.monotonic() - t0 > args.timeout or up.poll() is not None:
                    print(f"only {routed(state)} of {args.services} services routed", file=sys.stderr)
                    return 1
                time.sleep(0.2)
            ready = time.monotonic() - t0
            time.sleep(6)  # one more pass at steady state
            proc = psutil.Process(up.pid)
            tree = [proc, *proc.children(recursive=True)]
            own = proc.memory_info().rss / 2**20
            total = sum(p.memory_info().rss for p in tree if p.is_running()) / 2**20
            print(
                f"{'services':>8}  {'all routed after':>16}  {'up RSS':>8}  {'process tree RSS':>16}  processes"
            )
            print(f"{args.services:>8}  {ready:>15.1f}s  {own:>6.0f}MB  {total:>14.0f}MB  {len(tree)}")
        finally:
            up.terminate()
            try:
                up.wait(60)
            except subprocess.TimeoutExpired:
                up.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
