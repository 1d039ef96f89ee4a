"""The tidegate side of the SSH tunnels to cloud replicas: one SSH connection per ready replica,
exposed as a unix socket the gateway and the probes use like a local replica's.

Why this module exists: a cloud replica's service port is never open to the network; the gateway
reaches it through SSH (encrypted; the instance proves the host key tidegate generated for it, and
tidegate proves the installation's client key). Each tunnel is:

- a unix socket (0600, in a 0700 folder) that lives as long as the replica, whatever the SSH
  connection does, so routes never change when a connection drops;
- a supervisor task that keeps one SSH connection up, reconnecting with exponential backoff
  (a wrong host key or a refused client key is retried the same way, and reported);
- per accepted client, one `direct-tcpip` channel to 127.0.0.1:<service port> on the instance,
  spliced byte for byte. sshd's `permitopen` refuses any other destination.

The SSH side is asyncssh. It runs on one event loop in a daemon thread, so the synchronous
backends (called from the reconciler's worker threads) only post work to it. Nothing here reads
`~/.ssh`: no config file, no agent, no known_hosts file — only the pinned key is trusted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any, TypeVar

import asyncssh

from backends.cloud.tunnels import Backoff, TunnelStatus, TunnelTarget

log = logging.getLogger(__name__)
T = TypeVar("T")
CHUNK = 64 * 1024
HALF_CLOSE_GRACE = 30.0  # after one direction ended, how long the other may still run
SHORT_LIVED = 2.0  # a connection closed sooner counts as a failed attempt (no reconnect storm)


async def open_ssh(
    target: TunnelTarget, client_key: asyncssh.SSHKey, *, timeout: float = 10.0, keepalive: float = 15.0
) -> asyncssh.SSHClientConnection:
    """One SSH connection that trusts exactly `target.host_key` and offers exactly `client_key`."""
    return await asyncssh.connect(
        target.host,
        target.port,
        username=target.user,
        client_keys=[client_key],
        known_hosts=([asyncssh.import_public_key(target.host_key)], [], []),
        x509_trusted_certs=None,
        config=[],  # no ~/.ssh/config: nothing on this machine widens what is trusted
        agent_path=None,
        gss_host=None,
        password_auth=False,
        kbdint_auth=False,
        host_based_auth=False,
        # AES-GCM first: one OpenSSL call per packet with AES-NI (asyncssh's default puts
        # chacha20-poly1305 first, which takes several); every choice here is authenticated encryption.
        encryption_algs=["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com"],
        connect_timeout=timeout,
        login_timeout=timeout,
        keepalive_interval=keepalive,
        keepalive_count_max=3,
    )


def _describe(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return f"{type(e).__name__}: {text}"[:200]


def _private_dir(path: Path) -> None:
    """Create `path` 0700 (and a `tidegate-<uid>` temp parent) and refuse one another user owns:
    whoever can enter the folder can talk to the replica through the socket."""
    dirs = [path.parent, path] if path.parent.name.startswith("tidegate-") else [path]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = os.lstat(d)
        if st.st_uid != os.getuid() or not stat.S_ISDIR(st.st_mode):
            raise PermissionError(f"{d}: not a folder owned by uid {os.getuid()}; refusing to put tunnel sockets there")
        os.chmod(d, 0o700)


async def _pump(src: Any, dst: Any) -> None:
    """Copy until EOF, then pass the EOF on (a half-close stays a half-close)."""
    while True:
        data = await src.read(CHUNK)
        if not data:
            break
        dst.write(data)
        await dst.drain()
    with contextlib.suppress(OSError, asyncssh.Error, RuntimeError):
        dst.write_eof()


async def _splice(a_r: Any, a_w: Any, b_r: Any, b_w: Any) -> None:
    tasks = {asyncio.create_task(_pump(a_r, b_w)), asyncio.create_task(_pump(b_r, a_w))}
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if pending and not any(t.exception() for t in done):
            done, pending = await asyncio.wait(pending, timeout=HALF_CLOSE_GRACE)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for w in (a_w, b_w):
            with contextlib.suppress(Exception):
                w.close()


class _Tunnel:
    """One replica's socket, connection supervisor and spliced clients (all on the loop thread)."""

    def __init__(
        self, target: TunnelTarget, path: Path, key: asyncssh.SSHKey, backoff: Backoff, timeout: float
    ) -> None:
        self.target, self.path, self.key, self.backoff, self.timeout = target, path, key, backoff, timeout
        self.conn: asyncssh.SSHClientConnection | None = None
        self.up = asyncio.Event()
        self.failures = 0
        self.last_error: str | None = None
        self.server: asyncio.AbstractServer | None = None
        self.supervisor: asyncio.Task[None] | None = None
        self.clients: set[asyncio.Task[Any]] = set()
        self.closing = False

    async def start(self) -> None:
        _private_dir(self.path.parent)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a socket left by an earlier process
        self.server = await asyncio.start_unix_server(self._client, path=str(self.path))
        os.chmod(self.path, 0o600)
        self.supervisor = asyncio.create_task(self._supervise(), name=f"tunnel {self.target.replica_id}")

    async def _supervise(self) -> None:
        t = self.target
        while not self.closing:
            try:
                conn = await open_ssh(t, self.key, timeout=self.timeout)
            except Exception as e:  # every failure is retried with backoff; the reason is kept
                self.failures += 1
                self.last_error = _describe(e)
                if self.failures in (1, 3) or self.failures % 20 == 0:
                    log.warning(
                        "tunnel %s -> %s:%s: attempt %d failed: %s",
                        t.replica_id, t.host, t.port, self.failures, self.last_error,
                    )  # fmt: skip
                await asyncio.sleep(self.backoff.delay(self.failures))
                continue
            if self.failures:
                log.info("tunnel %s: connected after %d failed attempts", t.replica_id, self.failures)
            self.conn, self.failures, self.last_error = conn, 0, None
            self.up.set()
            opened = time.monotonic()
            try:
                await conn.wait_closed()
            finally:
                self.up.clear()
                self.conn = None
            self.last_error = "connection closed"
            log.info("tunnel %s: connection closed; reconnecting", t.replica_id)
            if time.monotonic() - opened < SHORT_LIVED:  # a server that accepts and drops: back off
                self.failures += 1
                await asyncio.sleep(self.backoff.delay(self.failures))

    async def _connection(self) -> asyncssh.SSHClientConnection | None:
        if self.conn is None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.up.wait(), self.timeout)
        return self.conn

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.clients.add(task)
        try:
            conn = await self._connection()
            if conn is None:
                return  # no SSH connection within the timeout: the caller sees a closed socket
            try:
                up_r, up_w = await conn.open_connection("127.0.0.1", self.target.service_port)
            except (asyncssh.Error, OSError) as e:
                log.warning("tunnel %s: channel refused: %s", self.target.replica_id, _describe(e))
                return
            await _splice(reader, writer, up_r, up_w)
        except asyncio.CancelledError:
            pass  # the tunnel is closing; asyncio's stream server must not see a cancelled handler
        finally:
            with contextlib.suppress(Exception):
                writer.close()
            if task is not None:
                self.clients.discard(task)

    def status(self) -> TunnelStatus:
        return TunnelStatus(self.conn is not None, self.failures, self.last_error)

    async def close(self) -> None:
        self.closing = True
        if self.server is not None:
            self.server.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        tasks = {t for t in [self.supervisor, *self.clients] if t is not None}
        if self.conn is not None:
            self.conn.close()
        # Cancel until done: on Python 3.11 a cancel that lands as asyncssh's connect timeout
        # (asyncio.wait_for) completes can be swallowed, and the supervisor would go on retrying.
        while tasks:
            for task in tasks:
                task.cancel()
            done, tasks = await asyncio.wait(tasks, timeout=0.5)
            for task in done:
                error = None if task.cancelled() else task.exception()
                if error is not None:
                    log.debug("tunnel %s: task ended with %s", self.target.replica_id, _describe(error))


class TunnelManager:
    """The tunnels of one backend, keyed by replica id. Thread-safe; the loop thread starts on the
    first `ensure`."""

    def __init__(
        self,
        socket_path: Callable[[str], Path],
        client_key: Callable[[], str],
        *,
        backoff: Backoff | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        self._socket_path = socket_path
        self._client_key_text = client_key
        self._key: asyncssh.SSHKey | None = None
        self._backoff = backoff or Backoff()
        self._timeout = connect_timeout
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tunnels: dict[str, _Tunnel] = {}  # touched on the loop thread only

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(
                    target=self._loop.run_forever, name="tidegate-tunnels", daemon=True
                )
                self._thread.start()
            loop = self._loop
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    # ---- the synchronous API the backends call --------------------------------------------
    def ensure(self, target: TunnelTarget) -> Path:
        """The replica's socket, tunnelling to `target` (restarted when the target changed)."""
        return self._run(self._ensure(target))

    def close(self, replica_id: str) -> None:
        if self._loop is not None:
            self._run(self._close([replica_id]))

    def retain(self, replica_ids: Iterable[str]) -> None:
        """Close every tunnel whose replica is not in `replica_ids` (gone, exited, not ours)."""
        if self._loop is not None:
            keep = set(replica_ids)
            self._run(self._close([r for r in list(self._tunnels) if r not in keep]))

    def status(self, replica_id: str) -> TunnelStatus | None:
        tunnel = self._tunnels.get(replica_id)
        return tunnel.status() if tunnel is not None else None

    def replica_ids(self) -> list[str]:
        return sorted(self._tunnels)

    def shutdown(self) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._close(list(self._tunnels)), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=10)
        loop.close()

    # ---- on the loop thread ----------------------------------------------------------------
    async def _ensure(self, target: TunnelTarget) -> Path:
        current = self._tunnels.get(target.replica_id)
        if current is not None and current.target == target:
            return current.path
        if current is not None:
            log.info("tunnel %s: target changed; reopening", target.replica_id)
            await self._close([target.replica_id])
        if self._key is None:
            self._key = asyncssh.import_private_key(self._client_key_text())
        tunnel = _Tunnel(target, self._socket_path(target.replica_id), self._key, self._backoff, self._timeout)
        await tunnel.start()
        self._tunnels[target.replica_id] = tunnel
        log.info("tunnel %s: %s -> %s@%s:%s", target.replica_id, tunnel.path, target.user, target.host, target.port)
        return tunnel.path

    async def _close(self, replica_ids: list[str]) -> None:
        for rid in replica_ids:
            tunnel = self._tunnels.pop(rid, None)
            if tunnel is not None:
                await tunnel.close()
                log.info("tunnel %s: closed", rid)
