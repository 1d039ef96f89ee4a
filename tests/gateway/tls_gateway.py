"""A gateway with its HTTPS listener, in this process, on a fixed plain port (what ACME's CA calls)."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from gateway.core import Gateway
from gateway.server import build_app, uvicorn_options
from gateway.settings import GatewaySettings
from gateway.tls.listener import GatewayServer, start_acme
from gateway.tls.manager import AcmeManager
from tests.gateway.conftest import wait_for
from tidegate.routes import RoutesSnapshot
from tidegate.routes_io import write_snapshot

DOMAIN = "tidegate.test"


def tls_settings(state: Path, **overrides: Any) -> GatewaySettings:
    base = GatewaySettings(state_dir=state, domain=DOMAIN, access_log=False, stats_interval=0.2, https_listen="127.0.0.1:0")
    return replace(base, **overrides)


class TlsGateway:
    def __init__(self, settings: GatewaySettings, plain_port: int) -> None:
        self.settings = settings
        self.gateway = Gateway(settings)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", plain_port))
        self.plain_port = plain_port
        options = {k: v for k, v in uvicorn_options(settings).items() if k not in ("host", "port")}
        self.server = GatewayServer(uvicorn.Config(build_app(settings, self.gateway), **options), settings.https_address)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.acme: AcmeManager | None = None

    @property
    def https_port(self) -> int:
        assert self.server.https_port is not None
        return self.server.https_port

    def start(self, acme: bool = False) -> TlsGateway:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("gateway did not start")
            time.sleep(0.02)
        if acme:
            self.acme = start_acme(self.settings, self.server)
        return self

    def stop(self) -> None:
        if self.acme is not None:
            self.acme.stop()
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()

    def publish(self, snapshot: RoutesSnapshot) -> None:
        write_snapshot(self.settings.state_dir, snapshot)
        wait_for(lambda: self.gateway.table.snapshot.serial == snapshot.serial, "routes reload")

    def plain(self, host: str) -> httpx.Client:
        return httpx.Client(base_url=f"http://127.0.0.1:{self.plain_port}", headers={"Host": host}, timeout=10)
