"""A plain HTTP server on 127.0.0.1 that answers every GET with `<greeting> <path>`: the service a
fake cloud instance runs behind its SSH tunnel in the tunnel drills."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@contextmanager
def hello_server(greeting: str) -> Iterator[int]:
    """Serve until the block ends; yields the port. `{port}` in `greeting` becomes that port."""

    class Hello(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f"{greeting.replace('{port}', str(self.server.server_address[1]))} {self.path}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
