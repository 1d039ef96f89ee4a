"""A TCP proxy on loopback in front of one real server that can *hold* what clients send.

While held, the proxy still accepts connections but forwards nothing a client sends (what was
sent waits, and goes on when released): the client sees what a request to a paused process, or
to an etcd follower waiting for an election, looks like — a connection that opens and is never
answered. It counts the HTTP requests it sees by path (`seen`), so a test can tell how often a
client tried. Real sockets, no knowledge of etcd.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time

REQUEST_LINE = re.compile(rb"(?:GET|POST|PUT|DELETE) (/\S*) HTTP/1\.[01]\r\n")


class HoldingProxy:
    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.held = threading.Event()
        self.seen: list[tuple[float, str, bool]] = []  # (monotonic time, path, held when sent)
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def requests(self, path: str, since: float = 0.0) -> list[tuple[float, bool]]:
        with self._lock:
            return [(t, held) for t, p, held in self.seen if p == path and t >= since]

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if from_client:
                    now, held = time.monotonic(), self.held.is_set()
                    with self._lock:
                        self.seen += [(now, m.group(1).decode(), held) for m in REQUEST_LINE.finditer(data)]
                    while self.held.is_set() and not self._closed.is_set():
                        time.sleep(0.01)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self._closed.set()
        self.held.clear()
        self._listener.close()
