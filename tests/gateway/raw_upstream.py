"""A raw-socket replica that misbehaves on purpose: each request is answered by the script named
by its path's first segment, written byte for byte (or hung, reset, cut) from a thread per
connection. Records connections, requests and which connections the gateway closed."""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

Script = Callable[["Exchange"], bool]  # True: keep the connection for another request


@dataclass
class Exchange:
    sock: socket.socket
    head: bytes
    body: bytes
    upstream: RawUpstream

    @property
    def path(self) -> str:
        return self.head.split(b" ", 2)[1].decode("latin-1")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reset(self) -> None:
        """Close with RST (SO_LINGER 0), not FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def hang_until_closed(self, limit: float = 30.0) -> None:
        """Answer nothing; return when the gateway closes the connection (recorded)."""
        self.sock.settimeout(limit)
        try:
            while self.sock.recv(4096):
                pass
            with self.upstream.lock:
                self.upstream.closed_by_peer += 1
        except OSError:
            pass


@dataclass
class RawUpstream:
    scripts: dict[str, Script]
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    closed_by_peer: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> RawUpstream:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(256)
        self.port = self.listener.getsockname()[1]
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        # Wake the blocked accept() first (shutdown makes it fail) and only then close: closing the
        # fd under a thread about to call accept() lets it accept on whatever socket reuses the fd
        # number next — another test's server (seen: the fake GitHub's requests answered here).
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.acceptor.join(5)
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                length = int(m.group(1)) if m else 0
                while len(buf) < length:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buf += data
                body, buf = buf[:length], buf[length:]
                with self.lock:
                    self.requests.append(head)
                ex = Exchange(sock, head, body, self)
                name = ex.path.split("/")[1].split("?")[0]
                if not self.scripts[name](ex):
                    return
        except OSError:
            return
        finally:
            with contextlib.suppress(OSError):
                sock.close()


def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
