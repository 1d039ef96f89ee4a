"""Reconciler benchmark (not a test): plan/apply time at 10/100/1,000 services, resident memory,
and push-to-ready time for a trivial local service. Prints a table (`make bench`).

- plan / apply / no-op pass: the real Engine over a tree of N service files, on the recording
  in-memory backend from tests/reconciler/fakes.py (so the numbers are the reconciler's own cost:
  loading + validating configs, planning, journaling, state and routes writes). Median of runs.
- RSS: this process's resident memory (psutil) after the 1,000-service runs.
- push-to-ready: a real `tidegate up` subprocess on the local backend watching a bare repo; each run
  pushes a commit adding a new service and times until routes.json lists a ready upstream for it.
  Two wake-up paths: the push webhook (a `wake` signal file, what `POST /hooks/git` drops; interval
  30 s so the timer never helps) and plain polling with `--interval 1`.

Usage: .venv/bin/python bench/reconcile.py [--sizes 10,100,1000] [--runs 5] [--push-runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backends.base import BackendRegistry  # noqa: E402
from reconciler.engine.reconcile import Engine, EngineSettings, Snapshot  # noqa: E402
from tests.reconciler.fakes import FakeBackend, FakeProber  # noqa: E402

SERVICE = """\
type: service
name: {name}
env:
  - GREETING={greeting}
commands:
  - python3 app.py 8000
port: 8000
auth: false
backends: [local]
resources:
  cpu: 1..
  memory: 64MB..
  disk: 1GB..
"""

APP = """\
import os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        b = os.environ.get("GREETING", "").encode()
        self.send_response(200); self.send_header("Content-Length", str(len(b))); self.end_headers(); self.wfile.write(b)
    def log_message(self, *a): pass
HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def write_tree(root: Path, n: int, greeting: str) -> None:
    for i in range(n):
        d = root / f"svc-{i:04d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / ".dstack.yml").write_text(SERVICE.format(name=f"svc-{i:04d}", greeting=greeting))


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def engine_run(n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        tree_v1, tree_v2 = base / "v1", base / "v2"
        write_tree(tree_v1, n, "v1")
        write_tree(tree_v2, n, "v2")
        backend = FakeBackend()
        engine = Engine(
            base / "state",
            BackendRegistry({"local": backend}),
            EngineSettings(drain_min=0.0, drain_grace=0.0),
            prober=FakeProber(),
        )
        try:
            s1, s2 = Snapshot("rev-1", tree_v1), Snapshot("rev-2", tree_v2)
            out = {
                "plan": timed(lambda: engine.plan(s1)),  # cold: loads and validates N files
                "apply": timed(lambda: engine.reconcile(s1)),  # creates N replicas
            }
            engine.reconcile(s1)  # probes: everything ready
            out["noop"] = timed(lambda: engine.reconcile(s1))
            out["plan_update"] = timed(lambda: engine.plan(s2))
            out["creates"] = float(len(backend.creates()))
        finally:
            engine.close()
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@b", *args], cwd=cwd, check=True, capture_output=True)


def ready(state: Path, name: str) -> bool:
    try:
        routes = json.loads((state / "routes.json").read_bytes())
    except (OSError, ValueError):
        return False
    svc = routes.get("services", {}).get(name)
    return bool(svc and svc.get("upstreams"))


def push_to_ready(runs: int, webhook: bool) -> list[float]:
    from tidegate.signals import send_signal

    times: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        bare, work, state = base / "remote.git", base / "work", base / "state"
        bare.mkdir()
        git(bare, "init", "-q", "--bare", "-b", "main")
        work.mkdir()
        git(work, "init", "-q", "-b", "main")
        git(work, "remote", "add", "origin", str(bare))
        (work / "app.py").write_text(APP)
        git(work, "add", "-A")
        git(work, "commit", "-qm", "app")
        git(work, "push", "-q", "origin", "main")
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIDEGATE_")}
        up = subprocess.Popen(
            [sys.executable, "-m", "reconciler.cli.main", "up", "--repo", f"file://{bare}", "--state", str(state),
             "--listen", f"127.0.0.1:{free_port()}", "--interval", "30" if webhook else "1"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while not (state / "routes.json").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            for i in range(runs):
                name = f"bench-{i}"
                (work / f"{name}.dstack.yml").write_text(SERVICE.format(name=name, greeting=str(i)))
                git(work, "add", "-A")
                git(work, "commit", "-qm", name)
                git(work, "push", "-q", "origin", "main")
                t0 = time.perf_counter()
                if webhook:
                    send_signal(state, "wake", {"ref": "refs/heads/main"})
                while not ready(state, name):
                    if time.perf_counter() - t0 > 120:
                        raise SystemExit(f"{name} never became ready")
                    time.sleep(0.01)
                times.append(time.perf_counter() - t0)
        finally:
            up.terminate()
            up.wait(30)
            for proc in psutil.process_iter():  # `up` leaves replicas running: stop ours
                try:
                    if proc.environ().get("TIDEGATE_REPLICA_DIR", "").startswith(str(state)):
                        proc.kill()
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--push-runs", type=int, default=5)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]

    print(f"{'services':>8}  {'plan (cold)':>11}  {'apply':>9}  {'no-op pass':>10}  {'plan update':>11}  {'RSS':>8}")
    for n in sizes:
        results = [engine_run(n) for _ in range(args.runs)]
        med = {k: statistics.median(r[k] for r in results) for k in results[0]}
        rss = psutil.Process().memory_info().rss / 2**20
        print(
            f"{n:>8}  {med['plan'] * 1000:>9.0f}ms  {med['apply'] * 1000:>7.0f}ms  {med['noop'] * 1000:>8.0f}ms"
            f"  {med['plan_update'] * 1000:>9.0f}ms  {rss:>6.0f}MB"
        )
    if args.push_runs:
        for webhook in (True, False):
            times = push_to_ready(args.push_runs, webhook)
            how = "webhook wake (interval 30s)" if webhook else "polling (--interval 1)"
            print(
                f"push-to-ready, {how}: median {statistics.median(times):.2f}s "
                f"(min {min(times):.2f}s, max {max(times):.2f}s, {len(times)} runs)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
