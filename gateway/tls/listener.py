"""The HTTPS listener: uvicorn's server with a second, TLS socket serving the same app.

uvicorn applies one `ssl` setting to every socket it serves, and loads certificates once; the
gateway needs a plain listener (HTTP-01, redirects) beside a TLS one whose certificates change
under it. `GatewayServer` lets uvicorn start the plain listener, then opens the TLS one with the
same protocol class (so the client limits of server.py apply to both), the same connection
bookkeeping (graceful shutdown covers both) and the worker's `CertStore` context, whose SNI
callback picks the certificate per connection. The handshake must complete within the header
timeout, like a request head.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from collections.abc import Callable
from typing import Any

import uvicorn

from gateway.settings import GatewaySettings
from gateway.tls.acme_issue import AcmeAccount
from gateway.tls.files import read_cert_info
from gateway.tls.manager import AcmeManager

log = logging.getLogger("uvicorn.error")


def _gateway_of(app: Any) -> Any:
    while app is not None and not hasattr(app, "gateway"):
        app = getattr(app, "app", None)  # uvicorn's middleware wrap the app as `.app`
    return getattr(app, "gateway", None)


class GatewayServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, https: tuple[str, int] | None, tls_sock: socket.socket | None = None) -> None:
        super().__init__(config)
        self.https = https
        self.tls_sock = tls_sock  # bound by a parent process (several workers share it)
        self.https_port: int | None = None  # bound port (useful with port 0)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        tls_sock = self.tls_sock
        if tls_sock is None and self.https is not None:
            tls_sock = bind_https(self.https)
        await super().startup(sockets)
        if tls_sock is None or not self.started:
            return
        gateway = _gateway_of(self.config.loaded_app)
        if gateway is None or gateway.tls is None:
            tls_sock.close()
            raise RuntimeError("the HTTPS listener needs the gateway app (built with https_listen set)")
        config = self.config

        def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state, _loop=_loop
            )

        settings: GatewaySettings = gateway.settings
        server = await asyncio.get_running_loop().create_server(
            create_protocol, sock=tls_sock, ssl=gateway.tls.context, backlog=config.backlog,
            ssl_handshake_timeout=settings.header_timeout or None,
        )
        self.servers.append(server)
        self.https_port = tls_sock.getsockname()[1]
        gateway.https_bound(self.https_port)


def bind_https(address: tuple[str, int]) -> socket.socket:
    """The HTTPS listening socket; a bind failure is logged in one line and ends startup (exit 3, as uvicorn)."""
    host, port = address
    try:
        return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as e:
        log.error("cannot listen for HTTPS on %s:%s: %s", host, port, e.strerror or e)
        sys.exit(3)


def start_acme(
    settings: GatewaySettings, server: GatewayServer | None = None, ready: Callable[[], bool] | None = None
) -> AcmeManager | None:
    """The ACME manager for these settings (None without `--acme-email`), started; its first round
    waits for `server` to listen, as the CA connects to the plain listener to validate."""
    if not settings.acme_email:
        return None
    covered: tuple[str, ...] = ()
    if settings.tls_cert:
        try:
            with open(settings.tls_cert, "rb") as f:
                covered = read_cert_info(f.read()).names
        except (OSError, ValueError):
            covered = ()  # the worker says what is wrong with it
    account = AcmeAccount(settings.acme_email, settings.acme_directory, settings.acme_ca_bundle)
    manager = AcmeManager(
        settings.state_dir, account, settings.gateway_host, covered=covered,
        renew_fraction=settings.acme_renew_fraction, retry=settings.acme_retry,
        ready=(lambda: bool(server.started)) if server is not None else ready,
    )
    manager.start()
    return manager
