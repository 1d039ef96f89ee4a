"""End-to-end helpers: a bare git remote to push to, real `tidegate` processes, and /proc scans
for the local backend's replica mark (to count process trees and kill what a test left behind).

`tidegate up` leaves replicas running on purpose when it stops, so tests clean them up themselves
(see the `tidegate` fixture in conftest.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from backends.local.proc import MARK_DIR, MARK_REPLICA
from tests.support.git_repo import commit_push

ROOT = Path(__file__).resolve().parents[2]

def app_source(log_requests: bool = False) -> str:
    """A replica that answers GET with its replica id and the GREETING env value; with
    `log_requests`, it also prints "listening" and one line per request (the dashboard tails them)."""
    log_body = 'print("served", self.command, self.path, flush=True)' if log_requests else "pass"
    ready = 'print("listening", flush=True)' if log_requests else ""
    return textwrap.dedent(
        """
        import json, os, sys
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                body = json.dumps({"replica": os.environ.get("TIDEGATE_REPLICA"),
                                   "greeting": os.environ.get("GREETING")}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt, *args):
                LOG_BODY

        READY
        ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
        """
    ).replace("LOG_BODY", log_body).replace("READY", ready)


APP = app_source()

# Answers GET with its replica id and path; `/slow?s=N` first sleeps N seconds (a long request, or
# a long generation, in flight).
SLOW_APP = textwrap.dedent(
    """
    import json, os, sys, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import parse_qs, urlparse

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            url = urlparse(self.path)
            if url.path == "/slow":
                time.sleep(float(parse_qs(url.query).get("s", ["1"])[0]))
            body = json.dumps({"replica": os.environ.get("TIDEGATE_REPLICA"), "path": url.path}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
    """
)


def service_yaml(name: str, replicas: int = 1, greeting: str = "hello", extra: str = "") -> str:
    return textwrap.dedent(
        f"""\
        type: service
        name: {name}
        env:
          - GREETING={greeting}
        commands:
          - python3 app.py 8000
        port: 8000
        replicas: {replicas}
        auth: false
        backends: [local]
        resources:
          cpu: 1..
          memory: 64MB..
          disk: 1GB..
        """
    ) + extra


@dataclass
class Remote:
    bare: Path
    work: Path

    @property
    def url(self) -> str:
        return f"file://{self.bare}"

    def push(self, files: dict[str, str | None], message: str = "change") -> str:
        return commit_push(self.work, files, message, missing_ok=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def replica_processes(state: Path) -> list[psutil.Process]:
    """Live processes carrying a replica mark under `state` (scanning /proc through psutil)."""
    found = []
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
            mark = env.get(MARK_DIR)
            if mark and mark.startswith(str(state)) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def replica_trees(state: Path) -> dict[str, list[int]]:
    """replica id -> pids of its process-tree roots (marked processes leading their own session)."""
    trees: dict[str, list[int]] = {}
    for proc in replica_processes(state):
        try:
            rid = proc.environ().get(MARK_REPLICA, "?")
            if os.getsid(proc.pid) == proc.pid:
                trees.setdefault(rid, []).append(proc.pid)
            else:
                trees.setdefault(rid, [])
        except (psutil.NoSuchProcess, ProcessLookupError, psutil.AccessDenied):
            continue
    return trees


def kill_replicas(state: Path) -> None:
    for _ in range(3):
        procs = replica_processes(state)
        if not procs:
            return
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(procs, timeout=5)


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition", interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # transient while processes start
            last_exc = e
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}" + (f" (last error: {last_exc!r})" if last_exc else ""))


@dataclass
class Tidegate:
    """Runs `tidegate` commands against one state dir; `up()` starts a real long-running process."""

    state: Path
    port: int
    logs: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIDEGATE_")}
        env["PYTHONUNBUFFERED"] = "1"
        return {**env, **(extra or {})}

    def up(self, repo: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"up-{len(self.procs)}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler.cli.main", "up", "--repo", repo, "--state", str(self.state),
             "--listen", f"127.0.0.1:{self.port}", "--interval", "1", *args],
            cwd=ROOT, env=self.env(env), stdout=log, stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        return proc

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "reconciler.cli.main", *args, "--state", str(self.state)],
            cwd=ROOT, env=self.env(), capture_output=True, text=True, timeout=60,
        )

    def ps(self) -> dict[str, dict[str, Any]]:
        out = self.run("ps", "--json")
        assert out.returncode == 0, out.stderr
        return {s["name"]: s for s in json.loads(out.stdout)["services"]}

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.logs.glob("up-*.log")))

    def get(self, service: str, path: str = "/", timeout: float = 5.0) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}/services/{service}{path}", timeout=timeout)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


