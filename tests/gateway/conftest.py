"""Fixtures: real upstream servers (the examples, as subprocesses) and a real uvicorn gateway."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from gateway.access.tokens import create_token
from gateway.core import Gateway
from gateway.server import build_app, uvicorn_options
from gateway.settings import GatewaySettings
from tidegate.routes import RoutesSnapshot, ServiceRoute
from tidegate.routes_io import write_snapshot

ROOT = Path(__file__).resolve().parents[2]
SERVERS = ROOT / "examples" / "servers"


@dataclass
class Upstream:
    url: str
    proc: subprocess.Popen[str]


def start_example(script: str, *args: str) -> Upstream:
    proc = subprocess.Popen(
        [sys.executable, str(SERVERS / script), *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "<kind> example server on <url>"
    if " on " not in line:
        proc.kill()
        raise RuntimeError(f"{script} did not start: {line!r}")
    return Upstream(line.rsplit(" on ", 1)[1].strip(), proc)


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def openai_upstream() -> Iterator[Upstream]:
    up = start_example("openai_server.py", "--port", "0")
    yield up
    stop(up.proc)


@pytest.fixture(scope="session")
def openai_upstream_b() -> Iterator[Upstream]:
    up = start_example("openai_server.py", "--port", "0")
    yield up
    stop(up.proc)


@pytest.fixture(scope="session")
def tgi_unix_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    sock = tmp_path_factory.mktemp("tgi") / "tgi.sock"
    up = start_example("tgi_server.py", "--unix", str(sock))
    yield up
    stop(up.proc)


class RunningGateway:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.gateway = Gateway(settings)
        app = build_app(settings, self.gateway)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        options = {k: v for k, v in uvicorn_options(settings).items() if k not in ("host", "port")}
        config = uvicorn.Config(app, **options)  # the options `tidegate up` embeds the gateway with
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("gateway did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()

    def publish(self, snapshot: RoutesSnapshot) -> None:
        """Write routes.json and wait until the running gateway serves that serial."""
        write_snapshot(self.settings.state_dir, snapshot)
        wait_for(lambda: self.gateway.table.snapshot.serial == snapshot.serial, "routes reload")

    def client(self, host: str | None = None, token: str | None = None) -> httpx.Client:
        headers = {}
        if host:
            headers["Host"] = host
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.Client(base_url=self.url, headers=headers, timeout=20)


def wait_for(check: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


_serial = [100]


def snapshot_of(*services: ServiceRoute) -> RoutesSnapshot:
    _serial[0] += 1
    return RoutesSnapshot(serial=_serial[0], services={s.name: s for s in services})


@pytest.fixture
def make_gateway(tmp_path: Path) -> Iterator[Callable[..., RunningGateway]]:
    started: list[RunningGateway] = []

    def make(**overrides: Any) -> RunningGateway:
        state = tmp_path / f"state{len(started)}"
        state.mkdir()
        settings = replace(GatewaySettings(state_dir=state, access_log=False, stats_interval=0.2), **overrides)
        gw = RunningGateway(settings)
        gw.start()
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop()


@pytest.fixture
def token_for() -> Callable[[RunningGateway], str]:
    def make(gw: RunningGateway) -> str:
        token = create_token(gw.settings.state_dir, f"t{time.monotonic_ns()}")
        gw.gateway.tokens.refresh(force=True)
        return token

    return make
