"""Starting a local replica's supervisor: its command line, its environment, the handshake.

Why it exists: this is the one place where the local backend crosses into a new process, and the
things that must hold there are easy to state and to test apart from the backend's bookkeeping:
the replica's environment is an allowlist (`replica_env`: never the reconciler's own environment,
which holds the operator's tokens and cloud keys); env values travel only in the process
environment (never on a command line or on disk); every
process of the replica carries the marks that let /proc scanning find it; the supervisor leads
its own session (so a reconciler exit or Ctrl-C never reaches it, and one killpg stops it all);
and `create()` waits for the supervisor's one-line handshake, with a deadline.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from backends.base import ReplicaSpec
from backends.local.layout import ReplicaPaths
from backends.local.proc import MARK_DIR, MARK_OWNER, MARK_REPLICA
from backends.local.sandbox import SAFE_PATH

RELAY = Path(__file__).with_name("relay.py")
# Where a namespaced replica finds its outbound HTTP(S) proxy (backends/local/egress.py).
EGRESS_PORT = 47128


@dataclass(frozen=True)
class Launch:
    """How to start one replica's supervisor."""

    paths: ReplicaPaths
    port: int  # where the relay connects: the service port (namespace) or the engine's host port
    netns: bool
    log_max_bytes: int
    venv: Path | None = None
    venv_python: str | None = None
    venv_with_pip: bool = True
    sandbox: tuple[str, ...] = ()  # the bwrap/setpriv prefix (local_sandbox.bwrap_argv); () = none
    venv_owner: int | None = None  # the sandboxed service's uid, which gets the venv
    egress_policy: str | None = None  # local_egress.EgressPolicy as JSON
    start_token: str | None = None  # must still be in replica.json when the supervisor starts


def relay_command(launch: Launch) -> list[str]:
    p = launch.paths
    cmd = [
        sys.executable, "-I", "-S", str(RELAY),
        "--workdir", str(p.work),
        "--script", str(p.script),
        "--port", str(launch.port),
        "--socket", str(p.socket),
        "--log", str(p.log),
        "--log-max-bytes", str(launch.log_max_bytes),
        "--exit-file", str(p.exit_file),
    ]  # fmt: skip
    if launch.start_token is not None:
        cmd += ["--meta", str(p.meta), "--start-token", launch.start_token]
    if launch.netns:
        cmd.append("--netns")
        cmd += ["--egress-socket", str(egress_socket(p.socket)), "--egress-port", str(egress_port(launch.port))]
        if launch.egress_policy is not None:
            cmd += ["--egress-policy", launch.egress_policy]
    if launch.sandbox:
        cmd += ["--sandbox", json.dumps(list(launch.sandbox))]
    if launch.venv is not None and launch.venv_python is not None:
        cmd += ["--venv", str(launch.venv), "--venv-python", launch.venv_python]
        cmd += ["--provisioning-file", str(p.provisioning)]
        if launch.venv_with_pip:
            cmd.append("--venv-with-pip")
        if launch.venv_owner is not None:
            cmd += ["--venv-owner", str(launch.venv_owner)]
    return cmd


def egress_socket(http_socket: Path) -> Path:
    """Beside the replica's http.sock (which is already kept short enough to bind)."""
    return http_socket.with_name(http_socket.stem + "-egress.sock")


def egress_port(service_port: int) -> int:
    return EGRESS_PORT if service_port != EGRESS_PORT else EGRESS_PORT + 1


def proxy_env(service_port: int, spec_env: Mapping[str, str]) -> dict[str, str]:
    """Proxy variables for a namespaced replica; any the spec sets itself win."""
    url = f"http://127.0.0.1:{egress_port(service_port)}"
    names = {"HTTP_PROXY": url, "HTTPS_PROXY": url, "NO_PROXY": "localhost,127.0.0.1,::1"}
    out: dict[str, str] = {}
    for name, value in names.items():
        if name not in spec_env and name.lower() not in spec_env:
            out[name] = out[name.lower()] = value
    return out


# Taken from the reconciler's environment when set: they describe the machine, not a secret.
LOCALE_NAMES = ("LANG", "LANGUAGE", "TZ")
PROXY_NAMES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY")
# What a docker/podman client needs to find its engine (an `image:` replica runs that client).
ENGINE_CLIENT_NAMES = (
    "DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_CONFIG", "DOCKER_CERT_PATH", "DOCKER_TLS_VERIFY",
    "CONTAINER_HOST", "CONTAINER_CONNECTION", "XDG_RUNTIME_DIR",
)  # fmt: skip


def replica_env(
    host: Mapping[str, str],
    spec: ReplicaSpec,
    replica_dir: Path,
    owner: str,
    venv: Path | None,
    *,
    home: Path,
    tmpdir: Path,
    proxy: Mapping[str, str] | None = None,
    engine_client: bool = False,
) -> dict[str, str]:
    """A replica's whole environment, built from an allowlist (never a copy of `host`).

    - PATH: the replica's venv (if any), then a fixed system PATH; HOME and TMPDIR of its own;
    - LANG/LANGUAGE/LC_*/TZ from `host` when set there;
    - the proxy variables: `proxy` (our egress proxy, in a network namespace) or else the host's
      own proxy settings (a replica on the host network goes where the host goes);
    - for an `image:` replica (`engine_client`), the docker/podman client's own variables;
    - the spec's declared env (bare-KEY values are in it only when the reconciler decided this
      replica may have them: never for an untrusted preview);
    - last, the documented TIDEGATE_* marks (replica id, dir, owner), which the spec cannot override.
    """
    env: dict[str, str] = {"PATH": SAFE_PATH, "HOME": str(home), "TMPDIR": str(tmpdir)}
    for name, value in host.items():
        if name in LOCALE_NAMES or name.startswith("LC_"):
            env[name] = value
    if proxy is not None:
        env.update(proxy)
    else:
        for name, value in host.items():
            if name.upper() in PROXY_NAMES:
                env[name] = value
    if engine_client:
        env.update({name: host[name] for name in ENGINE_CLIENT_NAMES if name in host})
    if venv is not None:
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{SAFE_PATH}"
        env["VIRTUAL_ENV"] = str(venv)
    env.update(spec.env)
    env[MARK_REPLICA] = spec.replica_id
    env[MARK_DIR] = str(replica_dir)
    env[MARK_OWNER] = owner
    return env


def spawn_supervisor(
    cmd: list[str], env: Mapping[str, str], paths: ReplicaPaths, timeout: float
) -> tuple[subprocess.Popen[bytes], str]:
    """Start the supervisor in a new session and return it with its handshake line."""
    with open(paths.relay_err, "ab") as err:
        proc = subprocess.Popen(
            cmd,
            cwd=paths.dir,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            start_new_session=True,
            close_fds=True,
        )
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        ready = sel.select(timeout=timeout)
    line = proc.stdout.readline().decode(errors="replace").strip() if ready else ""
    proc.stdout.close()
    if not ready:
        line = "error: no handshake from the supervisor within the start timeout"
    return proc, line


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # REUSEADDR: connections of a stopped replica in TIME_WAIT do not make the port busy.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
