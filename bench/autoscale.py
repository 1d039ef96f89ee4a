"""Autoscaling benchmark (not a test): cold-start overhead at zero replicas, and load-step reaction.

Both run a real `tidegate up` (reconciler + gateway) on the local backend over a bare git repo.

- cold start: `--runs` services with `replicas: 0..1` sit at zero; each gets ONE request through
  the gateway (Host header), held until its first replica is ready. Two baselines, both measured
  in this run: the replica's own start-to-listening time (from the backend's `create()` writing
  its `replica.json`, before anything is spawned, to the first answer on its socket; this script
  polls both every 5 ms from before the request) and the same command started directly (no sandbox) and polled every 10 ms.
  Overhead = held request - the replica's own start-to-listening: what the gateway hold, the
  demand signal, the reconcile pass, the readiness probe and the routes reload add. Target
  < 200 ms (issue 13; before: 720-780 ms, 573 ms of it probe cadence).
- load step: a service with `replicas: 1..4`, target 2 rps/replica over the 30 s window,
  `scale_up_delay` 2s, goes from no traffic to a steady 5 rps (2.5x the target: it wants 3
  replicas). Reported: time from the first request to the first scale-up decision, to the decision
  desired 3, and to 3 ready replicas. The 30 s window alone reaches 4 rps (2 x target) only after
  about 30 * 4 / 5 = 24 s (before panic mode: 25.7 s); the 6 s panic window after about 5 s.
  Target: first scale-up decision < 8 s.

Usage: .venv/bin/python bench/autoscale.py [--runs 5]   (bounded: about a minute, < 3 min)
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
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent

APP = """\
import os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        b = os.environ.get("TIDEGATE_REPLICA", "direct").encode()
        self.send_response(200); self.send_header("Content-Length", str(len(b))); self.end_headers(); self.wfile.write(b)
    def log_message(self, *a): pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""

SERVICE = """\
type: service
name: {name}
commands:
  - python3 app.py 8000
port: 8000
auth: false
backends: [local]
resources:
  cpu: 1..
  memory: 64MB..
  disk: 1GB..
replicas: {replicas}
scaling:
  metric: rps
  target: {target}
  scale_up_delay: 2s
  scale_down_delay: 10m
  window: 30
"""

LOAD_TARGET = 2.0
LOAD_RPS = 5.0
LOAD_WANTS = 3
TIME_LIMIT = 170.0  # the whole script stays under 3 minutes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=b", "-c", "user.email=b@b", *args], cwd=cwd, check=True, capture_output=True
    )


def wait(predicate: Callable[[], bool], timeout: float, what: str, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(step)


def routes(state: Path) -> dict[str, dict[str, Any]]:
    try:
        doc = json.loads((state / "routes.json").read_bytes())
    except (OSError, ValueError):
        return {}
    services: dict[str, dict[str, Any]] = doc.get("services", {})
    return services


def ready_upstreams(state: Path, name: str) -> int:
    ups = routes(state).get(name, {}).get("upstreams") or []
    return sum(1 for u in ups if not u.get("draining"))


def desired(state: Path, name: str) -> int:
    try:
        doc = json.loads((state / "state.json").read_bytes())
    except (OSError, ValueError):
        return -1
    rec = doc.get("services", {}).get(name)
    return int(rec["desired_count"]) if rec else -1


def history_at(state: Path, name: str, event: str) -> float:
    """Wall time of the service's last history entry of this kind (the pass that did it)."""
    doc = json.loads((state / "state.json").read_bytes())
    return max(float(e["at"]) for e in doc["services"][name]["history"] if e["event"] == event)


class Listening(threading.Thread):
    """Polls every 5 ms for a replica of `prefix`: `created` when its `replica.json` appears (the
    local backend writes it first thing in `create()`, before spawning), `at` when its socket
    first answers an HTTP request (wall times)."""

    def __init__(self, replicas: Path, prefix: str) -> None:
        super().__init__(daemon=True)
        self.replicas, self.prefix = replicas, prefix
        self.created: float | None = None
        self.at: float | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            if self.created is None and any(self.replicas.glob(f"{self.prefix}-*/replica.json")):
                self.created = time.time()
            for sock in self.replicas.glob(f"{self.prefix}-*/http.sock"):
                try:
                    with socket.socket(socket.AF_UNIX) as s:
                        s.settimeout(1)
                        s.connect(str(sock))
                        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                        if s.recv(12).startswith(b"HTTP/1"):
                            self.at = time.time()
                            return
                except OSError:
                    pass
            self.halt.wait(0.005)


def direct_start(workdir: Path) -> float:
    """The replica's own start-to-ready time: spawn the command, poll until it answers."""
    port = free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py", str(port)], cwd=workdir)
    try:
        with httpx.Client(timeout=1) as c:
            while True:
                try:
                    if c.get(f"http://127.0.0.1:{port}/").status_code == 200:
                        return time.perf_counter() - t0
                except httpx.TransportError:
                    pass
                if time.perf_counter() - t0 > 30:
                    raise SystemExit("the app never answered when started directly")
                time.sleep(0.01)
    finally:
        proc.kill()
        proc.wait(5)


class Load(threading.Thread):
    """Open-loop GETs at a steady rate (each on its own thread, so a slow answer never slows it)."""

    def __init__(self, url: str, host: str, rps: float) -> None:
        super().__init__(daemon=True)
        self.url, self.host, self.rps = url, host, rps
        self.halt = threading.Event()
        self.ok = self.failed = 0
        self.lock = threading.Lock()
        self.client = httpx.Client(
            timeout=30, headers={"Host": host}, limits=httpx.Limits(max_connections=64)
        )

    def one(self) -> None:
        try:
            good = self.client.get(self.url).status_code == 200
        except httpx.HTTPError:
            good = False
        with self.lock:
            if good:
                self.ok += 1
            else:
                self.failed += 1

    def run(self) -> None:
        t0 = time.perf_counter()
        i = 0
        while not self.halt.is_set():
            threading.Thread(target=self.one, daemon=True).start()
            i += 1
            self.halt.wait(max(0.0, t0 + i / self.rps - time.perf_counter()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="cold starts (one service at zero each)")
    args = parser.parse_args()
    started = time.monotonic()
    cold = [f"cold-{i}" for i in range(args.runs)]

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        bare, work, state = base / "remote.git", base / "work", base / "state"
        bare.mkdir()
        git(bare, "init", "-q", "--bare", "-b", "main")
        work.mkdir()
        git(work, "init", "-q", "-b", "main")
        git(work, "remote", "add", "origin", str(bare))
        (work / "app.py").write_text(APP)
        for name in cold:
            (work / f"{name}.dstack.yml").write_text(SERVICE.format(name=name, replicas="0..1", target=10))
        (work / "step.dstack.yml").write_text(
            SERVICE.format(name="step", replicas=f"1..{LOAD_WANTS + 1}", target=f"{LOAD_TARGET:g}")
        )
        git(work, "add", "-A")
        git(work, "commit", "-qm", "bench")
        git(work, "push", "-q", "origin", "main")

        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIDEGATE_")}
        up = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "reconciler.cli.main",
                "up",
                "--repo",
                f"file://{bare}",
                "--state",
                str(state),
                "--listen",
                f"127.0.0.1:{port}",
                "--interval",
                "1",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        gateway = f"http://127.0.0.1:{port}/"
        try:
            wait(
                lambda: all(n in routes(state) for n in cold) and ready_upstreams(state, "step") == 1,
                90,
                "deploy",
            )

            held: list[float] = []
            own: list[float] = []  # the replica's own start -> listening
            # request -> process started, -> listening, -> probe passed, -> response
            phases: list[tuple[float, float, float, float]] = []
            with httpx.Client(timeout=60, transport=httpx.HTTPTransport(retries=0)) as c:
                for name in cold:
                    listening = Listening(state / "replicas", name)
                    listening.start()
                    time.sleep(0.05)
                    wall, t0 = time.time(), time.perf_counter()
                    r = c.get(gateway, headers={"Host": f"{name}.localhost"})
                    held.append(time.perf_counter() - t0)
                    listening.halt.set()
                    listening.join(5)
                    if r.status_code != 200 or "x-tidegate-cold-start" not in r.headers:
                        raise SystemExit(f"{name}: {r.status_code} {r.headers} {r.text[:200]}")
                    if listening.at is None or listening.created is None:
                        raise SystemExit(f"{name}: never saw the replica start and listen")
                    created = listening.created
                    own.append(listening.at - created)
                    ready_at = history_at(state, name, "replica ready")
                    phases.append(
                        (created - wall, listening.at - created, ready_at - listening.at, wall + held[-1] - ready_at)
                    )
            checkout = next(p for p in (state / "revisions").rglob("app.py")).parent
            direct = [direct_start(checkout) for _ in cold]

            load = Load(gateway, "step.localhost", LOAD_RPS)
            t0 = time.perf_counter()
            load.start()
            try:
                wait(lambda: desired(state, "step") > 1, 90, "the first scale-up decision", 0.05)
                t_first = time.perf_counter() - t0
                wait(lambda: desired(state, "step") >= LOAD_WANTS, 90, "the scale-up decision", 0.05)
                t_decided = time.perf_counter() - t0
                wait(lambda: ready_upstreams(state, "step") >= LOAD_WANTS, 60, "the new replicas", 0.05)
                t_ready = time.perf_counter() - t0
            finally:
                load.halt.set()
                load.join(10)
            time.sleep(1)  # let the last requests answer
        finally:
            up.terminate()
            up.wait(30)
            for proc in psutil.process_iter():  # `up` leaves replicas running: stop ours
                try:
                    if proc.environ().get("TIDEGATE_REPLICA_DIR", "").startswith(str(state)):
                        proc.kill()
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue

    def runs(xs: list[float]) -> str:
        return "(runs: " + ", ".join(f"{x * 1000:.0f}" for x in xs) + ")"

    overheads = [h - o for h, o in zip(held, own, strict=True)]
    med_held, med_direct, med_own = statistics.median(held), statistics.median(direct), statistics.median(own)
    print(f"cold start at zero replicas (median of {len(held)}; local backend, stdlib http app)")
    print(f"  {'first request held -> response':<44} {med_held * 1000:8.0f} ms   {runs(held)}")
    print(f"  {'baseline: replica start -> listening':<44} {med_own * 1000:8.0f} ms   {runs(own)}")
    print(f"  {'overhead (held - own start, per run)':<44} {statistics.median(overheads) * 1000:8.0f} ms   {runs(overheads)}   target < 200 ms")
    for i, what in enumerate(
        (
            "request -> replica created (demand, pass)",
            "created -> listening (baseline)",
            "listening -> probe passed (cadence)",
            "probe passed -> response (routes, gateway)",
        )
    ):
        print(f"  {'  ' + what:<44} {statistics.median(p[i] for p in phases) * 1000:8.0f} ms")
    print(f"  {'the command run directly (no sandbox)':<44} {med_direct * 1000:8.0f} ms   {runs(direct)}")
    print(f"  {'held - direct run':<44} {(med_held - med_direct) * 1000:8.0f} ms")
    print(
        f"load step 0 -> {LOAD_RPS:g} rps (target {LOAD_TARGET:g}/replica, window 30s, scale_up_delay 2s): 1 -> {LOAD_WANTS} replicas"
    )
    print(f"  {'first request -> first scale-up decision':<44} {t_first:8.1f} s   target < 8 s (before: 25.7 s)")
    print(f"  {'first request -> decision (desired 3)':<44} {t_decided:8.1f} s")
    print(f"  {'first request -> 3 replicas ready':<44} {t_ready:8.1f} s")
    print(f"  {'requests ok / failed during the step':<44} {load.ok:>8} / {load.failed}")
    print(f"total bench time {time.monotonic() - started:.0f} s")
    return 0 if load.failed == 0 and time.monotonic() - started < TIME_LIMIT else 1


if __name__ == "__main__":
    raise SystemExit(main())
