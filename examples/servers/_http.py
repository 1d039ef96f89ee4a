"""HTTP plumbing shared by the example servers (standard library only).

Why a module of its own: `openai_server.py` and `tgi_server.py` differ only in the protocol they
speak; listening on TCP or a unix socket, JSON and chunked responses, and the start-up line tests
wait for are the same. They run as `python3 examples/servers/<name>.py`, so this directory is on
`sys.path` and `import _http` finds this file (anything that copies one server copies this too).
"""

from __future__ import annotations

import argparse
import json
import os
import socketserver
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """ThreadingHTTPServer's twin on a unix socket (the local backend's replicas listen on one)."""

    daemon_threads = True

    def __init__(self, path: str, handler: type[BaseHTTPRequestHandler]) -> None:
        if os.path.exists(path):
            os.unlink(path)
        super().__init__(path, handler)

    def get_request(self) -> tuple[object, tuple[str, int]]:
        conn, _ = self.socket.accept()
        return conn, ("unix", 0)  # BaseHTTPRequestHandler expects a (host, port) address


class JsonHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive, quiet, with JSON and chunked-body helpers."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests start many of these
        pass

    def _json(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()


def listen_parser(description: str) -> argparse.ArgumentParser:
    """A parser with --host, --port and --unix; the server adds its own options."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--unix", default=None, help="listen on this unix socket path instead of host:port")
    return parser


def serve(handler: type[BaseHTTPRequestHandler], args: argparse.Namespace, kind: str) -> None:
    """Listen where `args` say, print "<kind> example server on <url>" (tests wait for that line)
    and serve until interrupted. `args.token_delay` is handed to the handlers via the server."""
    server: socketserver.TCPServer | UnixHTTPServer
    if args.unix:
        server = UnixHTTPServer(args.unix, handler)
        where = f"unix://{args.unix}"
    else:
        server = ThreadingHTTPServer((args.host, args.port), handler)
        where = f"http://{args.host}:{server.server_address[1]}"
    server.daemon_threads = True
    server.token_delay = args.token_delay  # type: ignore[attr-defined]
    print(f"{kind} example server on {where}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
