"""A real OpenSSH server on 127.0.0.1 standing in for a cloud instance's sshd.

It is configured from a rendered user-data script — the host key, the authorized_keys file and the
sshd drop-in that script would write on the instance are read back out of it (not written by
hand), with only their paths moved into the test's folder and the port made free. Debian's
`openssh-server` provides /usr/sbin/sshd (scripts/system-packages.sh installs it); sshd needs
root for its privilege separation, so without root the tests that use it are skipped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from backends.base import ReplicaSpec
from backends.cloud.startup import render_startup_script
from backends.cloud.tunnel_userdata import AUTHORIZED_KEYS_PATH, DROPIN_PATH, HOST_KEY_PATH, written_files
from backends.cloud.tunnels import CloudTunnels, TunnelTarget

SSHD = Path("/usr/sbin/sshd")


def require_sshd() -> None:
    if not SSHD.exists():
        pytest.fail("/usr/sbin/sshd is missing: install the Debian package openssh-server (scripts/system-packages.sh)")
    if os.geteuid() != 0:
        pytest.skip("sshd stand-in needs root (privilege separation)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Sshd:
    """sshd -D on 127.0.0.1:<port> configured from `script` (the instance's user data)."""

    def __init__(self, script: str, folder: Path, port: int | None = None) -> None:
        require_sshd()
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.port = port or free_port()
        files = written_files(script)
        self.host_key = folder / "host_key"
        self.host_key.write_text(files[HOST_KEY_PATH])
        self.host_key.chmod(0o600)
        # sshd reads authorized_keys as the (unprivileged) tunnel user, as on the instance, where
        # the file sits in /etc/ssh: so it goes in a folder that user may enter (pytest's is 0700).
        self.public_dir = Path(tempfile.mkdtemp(prefix="tidegate-sshd-"))
        self.public_dir.chmod(0o755)
        self.authorized_keys = self.public_dir / "authorized_keys"
        self.authorized_keys.write_text(files[AUTHORIZED_KEYS_PATH])
        self.authorized_keys.chmod(0o644)
        dropin = files[DROPIN_PATH].replace(HOST_KEY_PATH, str(self.host_key))
        dropin = dropin.replace(AUTHORIZED_KEYS_PATH, str(self.authorized_keys))
        # The port is the test's; everything else is the drop-in as the instance gets it.
        dropin = "\n".join(line for line in dropin.splitlines() if not line.startswith("Port "))
        (folder / "dropin.conf").write_text(dropin + "\n")
        self.config = folder / "sshd_config"
        # Like Ubuntu's sshd_config: the drop-in folder included first, then the image's settings.
        self.config.write_text(
            f"Include {folder / 'dropin.conf'}\n"
            f"Port {self.port}\nListenAddress 127.0.0.1\nPidFile {folder / 'sshd.pid'}\n"
            "UsePAM no\nStrictModes no\nLogLevel VERBOSE\nX11Forwarding yes\nPermitTTY yes\n"
        )
        self.log = folder / "sshd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Sshd:
        check = subprocess.run([str(SSHD), "-t", "-f", str(self.config)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(self.config)], stdout=log, stderr=log, start_new_session=True
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                assert self.proc.poll() is None, self.log.read_text()
                time.sleep(0.05)
        raise AssertionError(f"sshd did not listen on {self.port}: {self.log.read_text()}")

    def stop(self) -> None:
        """Stop sshd and the per-connection children it started (as a rebooted instance would:
        connections already accepted otherwise outlive the listener)."""
        if self.proc is None:
            return
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        for p in [psutil.Process(self.proc.pid), *children] if self.proc.poll() is None else children:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.terminate()
        _wait_ended(children, timeout=10)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.public_dir, ignore_errors=True)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def replica_spec(port: int, replica_id: str = "llm-abcdef12-0") -> ReplicaSpec:
    return ReplicaSpec(
        replica_id=replica_id,
        service=replica_id.split("-")[0],
        spec_hash="abcdef12",
        ordinal=0,
        port=port,
        image="ghcr.io/example/tiny:1",
        env={"HF_TOKEN": "declared-value"},
    )


def _wait_ended(procs: list[psutil.Process], timeout: float) -> None:
    """Wait until each process has ended. A zombie has ended: sshd's per-connection children are
    reparented when sshd exits, and their new parent may reap them only a second later (which
    `psutil.wait_procs` would wait out)."""
    deadline = time.monotonic() + timeout
    while procs and time.monotonic() < deadline:
        procs = [p for p in procs if _running(p)]
        if procs:
            time.sleep(0.02)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class FakeInstance:
    """What a cloud launch produces, on loopback: the user data rendered by the real code for
    `service_port`, and an sshd configured from it. `target()` is what the backend would tunnel to."""

    def __init__(
        self, tunnels: CloudTunnels, service_port: int, folder: Path, *, label: str = "test:1", user: str = "nobody"
    ) -> None:
        self.spec = replica_spec(service_port)
        self.endpoint = tunnels.endpoint(label, service_port, 22, user)
        self.user_data = render_startup_script(self.spec, self.endpoint)
        self.sshd = Sshd(self.user_data, folder).start()

    def target(self, **overrides: Any) -> TunnelTarget:
        base = TunnelTarget(
            replica_id=self.spec.replica_id,
            host="127.0.0.1",
            port=self.sshd.port,
            user=self.endpoint.user,
            host_key=self.endpoint.host_key.public,
            service_port=self.spec.port,
        )
        return dataclasses.replace(base, **overrides)
