"""Outbound HTTP(S) for replicas in their own network namespace: a tiny forward proxy.

Why it exists: a replica's namespace has only `lo`, so `pip install …` in its commands (the seed's
vLLM example, the SmolLM2 example) could not reach a package index. Unix sockets cross network
namespaces, so the supervisor forks this proxy *before* it unshares the network: the proxy stays in
the host's namespace, listening on `<replica dir>/egress.sock`. Inside the namespace the supervisor
listens on `127.0.0.1:<egress port>` and pipes each connection to that socket, and the replica gets
`HTTP_PROXY`/`HTTPS_PROXY` pointing there (`NO_PROXY` keeps loopback direct). Proxy-aware clients
(pip, curl, requests, httpx, huggingface_hub) then work as on the host; inbound traffic still only
arrives through the replica's `http.sock`.

Supported: `CONNECT host:port` (HTTPS and any TLS), and absolute-form plain HTTP requests, one
request per connection (`Connection: close` is forced so a second request on the connection cannot
be sent to the wrong host). Standard library only: run inside the supervisor, which imports nothing
else.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from urllib.parse import urlsplit

MAX_HEAD = 64 * 1024
CHUNK = 64 * 1024


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


def parse_head(head: bytes) -> tuple[str, str, int, bytes]:
    """(method, host, port, head to send upstream) of one proxy request head. ValueError if bad."""
    lines = head.split(b"\r\n")
    method, target, version = lines[0].decode("latin-1").split(" ", 2)
    if method == "CONNECT":
        host, _, port = target.rpartition(":")
        return method, host.strip("[]"), int(port), b""
    url = urlsplit(target)
    if url.scheme != "http" or not url.hostname:
        raise ValueError(f"not an absolute http URL: {target!r}")
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    kept = [
        line
        for line in lines[1:]
        if line and not line.lower().startswith((b"proxy-connection:", b"connection:", b"keep-alive:"))
    ]
    out = [f"{method} {path} {version}".encode("latin-1"), *kept, b"Connection: close", b"", b""]
    return method, url.hostname, url.port or 80, b"\r\n".join(out)


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    up_writer: asyncio.StreamWriter | None = None
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > MAX_HEAD:
            raise ValueError("request head too large")
        method, host, port, upstream_head = parse_head(head)
        try:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError as e:
            writer.write(f"HTTP/1.1 502 Bad Gateway\r\nContent-Length: {len(str(e))}\r\n\r\n{e}".encode())
            await writer.drain()
            return
        if method == "CONNECT":
            writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            await writer.drain()
        else:
            up_writer.write(upstream_head)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
    except (ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        with contextlib.suppress(Exception):
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    finally:
        for w in (up_writer, writer):
            if w is not None:
                with contextlib.suppress(Exception):
                    w.close()


async def serve(socket_path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)
    server = await asyncio.start_unix_server(handle, path=socket_path, limit=MAX_HEAD)
    os.chmod(socket_path, 0o600)
    async with server:
        await server.serve_forever()
