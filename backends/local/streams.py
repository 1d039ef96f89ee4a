"""Byte pipes between sockets for the local backend's supervisor: the replica's unix socket to
its port, and the egress listener inside the namespace to the egress proxy.

Why a module of its own: moving bytes both ways until either side closes is one concern, shared by
the supervisor (relay.py) and the egress proxy (egress.py); the supervisor itself is about the
replica's process. Standard library only, and asyncio is imported when a pipe is first built:
this runs inside the supervisor (`python -I -S`, by path), whose start-up it must not slow down.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported lazily at run time: it is the slowest part of start-up
    import asyncio

CHUNK = 64 * 1024
PROXY_START_TRIES = 200  # x 0.05 s: how long a first outbound connection waits for the egress proxy

Handler = Callable[["asyncio.StreamReader", "asyncio.StreamWriter"], Awaitable[None]]
Opener = Callable[[], Awaitable[tuple["asyncio.StreamReader", "asyncio.StreamWriter"]]]


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


async def open_loopback(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    import asyncio

    last: OSError | None = None
    for host in ("127.0.0.1", "::1"):
        try:
            return await asyncio.open_connection(host, port)
        except OSError as e:
            last = e
    assert last is not None
    raise last


def relay_to(open_upstream: Opener) -> Handler:
    """A connection handler that pipes both ways to what `open_upstream` connects to; when that
    fails (the replica is not listening yet) the client sees a closed connection (not ready)."""
    import asyncio

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await open_upstream()
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            for w in (up_writer, writer):
                with contextlib.suppress(Exception):
                    w.close()

    return handle


def make_unix_forwarder(path: str) -> Handler:
    """Pipe each connection accepted inside the namespace to the egress proxy's unix socket."""
    import asyncio

    async def open_proxy() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        # The proxy is a forked child still importing when the commands make their first request
        # (or its socket file is a previous run's): wait for it a little rather than drop that one.
        for _ in range(PROXY_START_TRIES):
            try:
                return await asyncio.open_unix_connection(path)
            except (FileNotFoundError, ConnectionRefusedError):
                await asyncio.sleep(0.05)
        return await asyncio.open_unix_connection(path)

    return relay_to(open_proxy)


def make_handler(port: int) -> Handler:
    """Pipe each connection on the replica's socket to its port (IPv4 or IPv6 loopback)."""
    return relay_to(lambda: open_loopback(port))
