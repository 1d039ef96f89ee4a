"""An httpx client whose every host name resolves to 127.0.0.1 (like `curl --resolve`).

The URL keeps the real name, so TLS sends it as SNI and checks the certificate against it; only
the TCP connection goes to loopback. Used to talk to `https://<name>.<domain>` in tests without
DNS or /etc/hosts.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx


class _Loopback(httpcore.SyncBackend):
    def connect_tcp(
        self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        return super().connect_tcp("127.0.0.1", port, timeout, local_address, socket_options)


def loopback_client(ca_file: str | None = None, **kwargs: Any) -> httpx.Client:
    """httpx.Client trusting `ca_file` (when given), every name connecting to 127.0.0.1."""
    ctx = ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
    transport = httpx.HTTPTransport(verify=ctx)
    transport._pool = httpcore.ConnectionPool(ssl_context=ctx, network_backend=_Loopback())
    return httpx.Client(transport=transport, **kwargs)


def peer_certificate_der(host: str, port: int, ca_file: str | None = None) -> bytes:
    """The leaf certificate 127.0.0.1:`port` presents for SNI `host` (verified against `ca_file`
    when given, else not verified)."""
    import socket

    ctx = ssl.create_default_context(cafile=ca_file) if ca_file else ssl._create_unverified_context()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw, server_hostname=host) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der
