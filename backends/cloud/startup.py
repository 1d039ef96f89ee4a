"""The cloud-init script that starts one replica on a fresh VM (shared by the AWS and Azure backends).

Why this module exists: both clouds boot a GPU image and must start the service the same way —
its `image` under docker with the GPUs and the port mapped, or its `python` + `commands` on the
host — with its env — and must first set up the SSH endpoint the gateway tunnels through
(backends/cloud/tunnel_userdata.py), before anything slow can fail. The env is the service's declared
`env` only (resolved by the reconciler, bare-`KEY` secrets only where the trust model allows), never
the reconciler's own environment; it goes into the instance's own user data (base64, written to a
root-only file), never into tidegate's logs or state. A container's port is published on the
instance's loopback only: the tunnel is the one way in. Pure: values in, a script out.
"""

from __future__ import annotations

import base64
import re
import shlex

from backends.base import ReplicaSpec
from backends.cloud.tunnel_userdata import TunnelEndpoint, tunnel_setup_lines

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def unit_name(replica_id: str) -> str:
    return "tidegate-" + _SAFE.sub("-", replica_id)[:60]


def _env_file(spec: ReplicaSpec) -> str:
    lines = []
    for key in sorted(spec.env):
        if not _ENV_NAME.match(key):
            raise ValueError(f"invalid environment variable name {key!r}")
        lines.append(f"export {key}={shlex.quote(spec.env[key])}")
    return "\n".join(lines) + "\n"


def _command_line(commands: tuple[str, ...]) -> str:
    return " && ".join(f"({c})" for c in commands)


def render_startup_script(spec: ReplicaSpec, tunnel: TunnelEndpoint) -> str:
    """A `#!/bin/bash` cloud-init script that opens the tunnel endpoint, then starts the replica."""
    if tunnel.service_port != spec.port:
        raise ValueError(f"tunnel forwards to port {tunnel.service_port}, the service listens on {spec.port}")
    unit = unit_name(spec.replica_id)
    env_b64 = base64.b64encode(_env_file(spec).encode()).decode()
    env_path = f"/etc/tidegate/{unit}.env"
    head = [
        "#!/bin/bash",
        f"# tidegate replica {spec.replica_id} (service {spec.service}, spec {spec.spec_hash})",
        "set -euo pipefail",
        "install -d -m 700 /etc/tidegate",
        "umask 077",
        *tunnel_setup_lines(tunnel),
        f"echo {env_b64} | base64 -d > {env_path}",
    ]
    if spec.image:
        gpus = "--gpus all " if spec.requirements.gpu is not None else ""
        env_flags = "".join(f"-e {k} " for k in sorted(spec.env))
        cmd = f" /bin/sh -c {shlex.quote(_command_line(spec.commands))}" if spec.commands else ""
        body = [
            f"set -a; . {env_path}; set +a",
            f"docker rm -f {unit} >/dev/null 2>&1 || true",
            f"docker pull {shlex.quote(spec.image)}",
            f"docker run -d --name {unit} --restart unless-stopped {gpus}"
            f"-p 127.0.0.1:{spec.port}:{spec.port} {env_flags}{shlex.quote(spec.image)}{cmd}",
        ]
    else:
        python = spec.python or "3.11"
        run = "\n".join(
            [
                "#!/bin/bash",
                "set -euo pipefail",
                f"set -a; . {env_path}; set +a",
                "export PATH=/root/.local/bin:$PATH",
                "mkdir -p /opt/tidegate/work && cd /opt/tidegate/work",
                f"[ -d .venv ] || uv venv --python {shlex.quote(python)} .venv",
                ". .venv/bin/activate",
                f"exec /bin/bash -c {shlex.quote(_command_line(spec.commands) or 'true')}",
            ]
        )
        run_b64 = base64.b64encode(run.encode()).decode()
        body = [
            "command -v uv >/dev/null 2>&1 || curl -LsSf https://astral.sh/uv/install.sh | sh",
            f"echo {run_b64} | base64 -d > /opt/{unit}.sh",
            f"systemd-run --unit={unit} --property=Restart=on-failure /bin/bash /opt/{unit}.sh",
        ]
    return "\n".join(head + body) + "\n"
