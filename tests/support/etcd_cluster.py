"""A real 3-member etcd cluster on loopback ports, for the shared-state tests.

Debian's `etcd-server` provides /usr/bin/etcd (the Makefile's SYSTEM_PACKAGES installs it). Each
member gets its own data dir, client port and peer port; members can be killed, paused (SIGSTOP),
resumed and restarted on the same data (a restarted member rejoins the cluster it left).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def require_etcd() -> None:
    if not Path(ETCD).exists():
        pytest.fail("etcd is missing: install the Debian package etcd-server (make system-packages)")


class EtcdCluster:
    def __init__(self, folder: Path, size: int = 3, election_ms: int = 1000) -> None:
        """`election_ms`: etcd's --election-timeout (its default 1000; heartbeats at a tenth):
        a larger one makes a lost raft leader replaced as slowly as on a loaded machine."""
        require_etcd()
        self.folder = folder
        self.election_ms = election_ms
        self.names = [f"m{i}" for i in range(size)]
        self.client_ports = [free_port() for _ in self.names]
        self.peer_ports = [free_port() for _ in self.names]
        self.token = f"tg-{uuid.uuid4().hex[:8]}"
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * size

    @property
    def endpoints(self) -> str:
        return ",".join(f"127.0.0.1:{p}" for p in self.client_ports)

    def url(self, prefix: str | None = None) -> str:
        return f"etcd://{self.endpoints}/{prefix or 'tg-' + uuid.uuid4().hex[:8]}"

    def _cmd(self, i: int) -> list[str]:
        initial = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in zip(self.names, self.peer_ports, strict=True))
        client = f"http://127.0.0.1:{self.client_ports[i]}"
        peer = f"http://127.0.0.1:{self.peer_ports[i]}"
        return [
            ETCD,
            "--name", self.names[i],
            "--data-dir", str(self.folder / self.names[i]),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", initial,
            "--initial-cluster-token", self.token,
            "--initial-cluster-state", "new",
            "--election-timeout", str(self.election_ms),
            "--heartbeat-interval", str(self.election_ms // 10),
            "--log-level", "error",
            "--logger", "zap",
        ]  # fmt: skip

    def start(self, i: int | None = None) -> None:
        for j in range(len(self.names)) if i is None else [i]:
            if self.procs[j] is not None and self.procs[j].poll() is None:  # type: ignore[union-attr]
                continue
            log = open(self.folder / f"{self.names[j]}.log", "ab")  # noqa: SIM115 - kept for the process
            self.procs[j] = subprocess.Popen(self._cmd(j), stdout=log, stderr=subprocess.STDOUT)
            log.close()

    def healthy(self, i: int) -> bool:
        try:
            r = httpx.get(f"http://127.0.0.1:{self.client_ports[i]}/health", timeout=1.0)
            return r.status_code == 200 and r.json().get("health") == "true"
        except (httpx.HTTPError, ValueError):
            return False

    def wait_healthy(self, members: list[int] | None = None, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        todo = list(range(len(self.names))) if members is None else members
        while time.monotonic() < deadline:
            if all(self.healthy(i) for i in todo):
                return
            time.sleep(0.1)
        logs = "\n".join((self.folder / f"{n}.log").read_text(errors="replace")[-2000:] for n in self.names)
        raise RuntimeError(f"etcd members {todo} not healthy in {timeout}s:\n{logs}")

    def raft_leader(self) -> int:
        """The index of the member that leads the raft group now."""
        for i, port in enumerate(self.client_ports):
            try:
                status = httpx.post(f"http://127.0.0.1:{port}/v3/maintenance/status", json={}, timeout=2.0).json()
            except (httpx.HTTPError, ValueError):
                continue
            if status.get("leader") and status.get("leader") == status.get("header", {}).get("member_id"):
                return i
        raise RuntimeError("no member says it leads")

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        self.procs[i] = None

    def pause(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None:
            os.kill(proc.pid, signal.SIGSTOP)

    def resume(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None:
            os.kill(proc.pid, signal.SIGCONT)

    def close(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
            self.kill(i)


@pytest.fixture(scope="session")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> object:
    """One cluster for the whole session: tests keep to their own prefix and leave members up."""
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd"))
    cluster.start()
    try:
        cluster.wait_healthy()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def own_etcd_cluster(tmp_path: Path) -> object:
    """A cluster of this test alone (it kills or pauses members)."""
    cluster = EtcdCluster(tmp_path / "etcd")
    (tmp_path / "etcd").mkdir()
    cluster.start()
    try:
        cluster.wait_healthy()
        yield cluster
    finally:
        cluster.close()
