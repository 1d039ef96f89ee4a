"""`tidegate gateway` and `tidegate up` processes on `--state etcd://…` for the shared-state tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.etcd_cluster import free_port

ROOT = Path(__file__).resolve().parents[2]


def tidegate(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler.cli.main", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


class GatewayProc:
    def __init__(
        self,
        url: str,
        local: Path,
        log: Path,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        out = open(log, "wb")  # noqa: SIM115 - handed to the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler.cli.main", "gateway", "--state", url, "--local-state", str(local),
             "--listen", f"127.0.0.1:{self.port}", "--no-access-log", *extra_args],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )  # fmt: skip
        out.close()
        self.http = httpx.Client(base_url=self.base, timeout=5.0)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited: {self.log.read_text()[-3000:]}")
            try:
                if self.http.get("/healthz").status_code in (200, 503):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"gateway not ready: {self.log.read_text()[-3000:]}")

    def health(self) -> dict[str, Any]:
        body: dict[str, Any] = self.http.get("/healthz").json()
        return body

    def models(self, token: str) -> int:
        return self.http.get("/v1/models", headers={"Authorization": f"Bearer {token}"}).status_code

    def close(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class Up:
    def __init__(
        self,
        url: str,
        repo: str,
        local: Path,
        log: Path,
        extra_env: dict[str, str] | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIDEGATE_")} | (extra_env or {})
        out = open(log, "wb")  # noqa: SIM115 - handed to the process
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler.cli.main", "up", "--repo", repo, "--state", url,
             "--local-state", str(local), "--listen", f"127.0.0.1:{self.port}", "--interval", "1", *extra_args],
            cwd=ROOT, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        out.close()

    def get(self, path: str = "/") -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}/services/web{path}", timeout=5.0)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
