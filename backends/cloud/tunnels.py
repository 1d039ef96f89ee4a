"""What a cloud backend needs for its replicas' tunnels: key material, socket paths, and — only in
the process that owns the state directory — the live tunnels.

Why a module apart from `ssh_tunnel`: every command that builds the cloud backends (`ps`, `plan`,
`gc`, `offers`) must report the same replica address, `unix://<state>/run/tunnels/<backend>/<id>.sock`,
but only the state dir's owner (`up`, `apply`) may bind those sockets and hold SSH connections. So
this part is cheap and imports no SSH library; `ssh_tunnel` (asyncssh) is imported when a tunnel is
first opened. A replica's tunnel is opened when the backend sees its instance running and closed
when the replica is deleted, stops running, or is no longer listed.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from backends.cloud.ssh_keys import HostKey, KeyFingerprint, KeyStore, ssh_fingerprint
from backends.cloud.tunnel_userdata import TunnelEndpoint
from tidegate.routes import TunnelRoute

if TYPE_CHECKING:
    from backends.cloud.ssh_tunnel import TunnelManager

# The key store is private to backends.cloud; the CLI checks key material through these names.
__all__ = [
    "HOST_KEY_TAG", "NO_HOST_KEY", "Backoff", "CloudTunnels", "KeyFingerprint", "KeyStore", "TunnelStatus",
    "TunnelTarget", "socket_path", "ssh_fingerprint",
]  # fmt: skip

SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; keep a margin (as backends/local/layout.py)
HOST_KEY_TAG = "tidegate:hostkey"  # the pinned public host key, on the instance / VM
# An instance without that tag was launched before tunnels: its service port is open and it can
# only be reached in clear text. It is reported as exited so the reconciler replaces it.
NO_HOST_KEY = "launched without a pinned SSH host key (before tunnels): replaced, never reached in clear text"


@dataclass(frozen=True)
class TunnelTarget:
    """Where one replica's tunnel goes and whom it trusts there."""

    replica_id: str
    host: str
    port: int  # the instance's sshd
    user: str
    host_key: str  # the pinned public host key, "ssh-ed25519 AAAA…"
    service_port: int  # forwarded to 127.0.0.1:<service_port> on the instance


@dataclass(frozen=True)
class Backoff:
    first: float = 0.5
    max: float = 30.0

    def delay(self, failures: int) -> float:
        return float(min(self.max, self.first * 2 ** max(0, failures - 1)))


@dataclass(frozen=True)
class TunnelStatus:
    connected: bool
    failures: int  # connection attempts failed in a row
    last_error: str | None


def socket_path(directory: Path, replica_id: str) -> Path:
    """`<directory>/<replica id>.sock`, or a short stable path in a private temp folder when that
    is too long to bind."""
    path = directory / f"{replica_id}.sock"
    if len(str(path)) <= SOCKET_PATH_MAX:
        return path
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:24]
    return Path(tempfile.gettempdir()) / f"tidegate-{os.getuid()}" / "tunnels" / f"{digest}.sock"


class CloudTunnels:
    """One cloud backend's tunnels. `active=False` (read-only commands): addresses only."""

    def __init__(
        self,
        state_dir: Path,
        backend: str,
        *,
        active: bool = False,
        backoff: Backoff | None = None,
        connect_timeout: float = 10.0,
        resolve: Callable[[TunnelTarget], TunnelTarget] | None = None,
        keys_dir: Path | None = None,
    ) -> None:
        self.backend = backend
        self.keys = KeyStore(keys_dir if keys_dir is not None else state_dir / "ssh")
        # Where to really connect for a target; tests point each replica at its own loopback sshd
        # (cloud emulators hand out addresses that are not ours to reach). Never set in production.
        self._resolve = resolve
        self.socket_dir = state_dir / "run" / "tunnels" / backend
        self.active = active
        self._backoff = backoff
        self._connect_timeout = connect_timeout
        self._manager: TunnelManager | None = None
        self._targets: dict[str, TunnelTarget] = {}  # the last target each replica was opened to
        self._targets_lock = threading.Lock()  # the backends' worker threads open and close

    # ---- instance side (user data) -------------------------------------------------------
    def endpoint(self, label: str, service_port: int, ssh_port: int, user: str) -> TunnelEndpoint:
        """The user-data half of one launch: its derived host key and the installation's key."""
        host_key: HostKey = self.keys.host_key(label)
        return TunnelEndpoint(
            client_public=self.keys.client_public(),
            host_key=host_key,
            service_port=service_port,
            ssh_port=ssh_port,
            user=user,
        )

    # ---- tidegate side ---------------------------------------------------------------------
    def socket(self, replica_id: str) -> Path:
        return socket_path(self.socket_dir, replica_id)

    def address(self, replica_id: str) -> str:
        return f"unix://{self.socket(replica_id)}"

    def _get_manager(self) -> TunnelManager:
        if self._manager is None:
            from backends.cloud.ssh_tunnel import TunnelManager

            self._manager = TunnelManager(
                self.socket,
                self.keys.client_private_openssh,
                backoff=self._backoff or Backoff(),
                connect_timeout=self._connect_timeout,
            )
        return self._manager

    def open(self, target: TunnelTarget) -> None:
        """Keep a tunnel to this running replica (no-op when not active)."""
        with self._targets_lock:
            self._targets[target.replica_id] = target
        if self.active:
            self._get_manager().ensure(self._resolve(target) if self._resolve else target)

    def route(self, replica_id: str) -> TunnelRoute | None:
        """Where this replica's tunnel goes, as the routes carry it (public facts only): what a
        gateway on another machine needs to open its own tunnel."""
        t = self._targets.get(replica_id)
        if t is None:
            return None
        return TunnelRoute(
            backend=self.backend, host=t.host, port=t.port, user=t.user, host_key=t.host_key,
            service_port=t.service_port,
        )  # fmt: skip

    def close(self, replica_id: str) -> None:
        with self._targets_lock:
            self._targets.pop(replica_id, None)
        if self._manager is not None:
            self._manager.close(replica_id)

    def retain(self, replica_ids: Iterable[str]) -> None:
        keep = set(replica_ids)
        with self._targets_lock:
            for rid in [r for r in self._targets if r not in keep]:
                del self._targets[rid]
        if self._manager is not None:
            self._manager.retain(keep)

    def status(self, replica_id: str) -> TunnelStatus | None:
        return self._manager.status(replica_id) if self._manager is not None else None

    def shutdown(self) -> None:
        if self._manager is not None:
            self._manager.shutdown()
            self._manager = None
