"""The instance side of the gateway's SSH tunnel, as lines of the replica's user-data script.

Why this module exists: a cloud replica must be reachable by the gateway and by nobody else, and
its service port must never face the internet. So the instance runs sshd with a host key that
tidegate generated (pinned: tidegate knows it before the first connection) and one extra account,
`tidegate-tunnel`, that has no shell, no password and exactly one authorized key — the
installation's — restricted by OpenSSH itself to forwarding TCP to 127.0.0.1:<service port>:

    restrict,port-forwarding,permitopen="127.0.0.1:8000" ssh-ed25519 AAAA… tidegate-gateway

An sshd drop-in repeats those limits for the account (`Match User`: local forwarding to that one
destination, no TTY, no agent/X11/stream-local forwarding, a forced `/bin/false`) so a mistake in
one of the two places is not enough. Files travel base64-encoded and are written with a 077 umask;
the one readable by sshd's unprivileged child (authorized keys) is then made 0644. Pure: values in,
script lines out.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

from backends.cloud.ssh_keys import HostKey

TUNNEL_USER = "tidegate-tunnel"
HOST_KEY_PATH = "/etc/ssh/ssh_host_tidegate_ed25519_key"
AUTHORIZED_KEYS_PATH = "/etc/ssh/tidegate_tunnel_authorized_keys"
DROPIN_PATH = "/etc/ssh/sshd_config.d/10-tidegate-tunnel.conf"
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_PUBLIC = re.compile(r"^ssh-ed25519 [A-Za-z0-9+/=]+$")


@dataclass(frozen=True)
class TunnelEndpoint:
    """What one instance needs to accept the gateway's tunnel and nothing else."""

    client_public: str  # the installation's key, "ssh-ed25519 AAAA…"
    host_key: HostKey  # this instance's pinned host key (the private half lives only in user data)
    service_port: int
    ssh_port: int = 22
    user: str = TUNNEL_USER

    def __post_init__(self) -> None:
        if not _USER.fullmatch(self.user):
            raise ValueError(f"invalid tunnel user name {self.user!r}")
        if not _PUBLIC.fullmatch(self.client_public.strip()):
            raise ValueError("the client key must be one 'ssh-ed25519 <base64>' line")
        for port in (self.service_port, self.ssh_port):
            if not 0 < port < 65536:
                raise ValueError(f"invalid port {port}")


def authorized_keys(ep: TunnelEndpoint) -> str:
    """The tunnel user's whole authorized_keys file: one key, forwarding to one destination."""
    return f'restrict,port-forwarding,permitopen="127.0.0.1:{ep.service_port}" {ep.client_public.strip()} tidegate-gateway\n'


def sshd_dropin(ep: TunnelEndpoint) -> str:
    """sshd settings: the pinned host key only, keys only, and the tunnel user's limits."""
    return "\n".join(
        [
            "# tidegate: the gateway's SSH tunnel (written by this instance's user data)",
            f"Port {ep.ssh_port}",
            f"HostKey {HOST_KEY_PATH}",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            f"Match User {ep.user}",
            f"    AuthorizedKeysFile {AUTHORIZED_KEYS_PATH}",
            "    AuthenticationMethods publickey",
            "    AllowTcpForwarding local",
            f"    PermitOpen 127.0.0.1:{ep.service_port}",
            "    AllowAgentForwarding no",
            "    AllowStreamLocalForwarding no",
            "    X11Forwarding no",
            "    PermitTTY no",
            "    PermitTunnel no",
            "    GatewayPorts no",
            "    ForceCommand /bin/false",
            "",
        ]
    )


def _write(path: str, content: str, mode: str) -> list[str]:
    b64 = base64.b64encode(content.encode()).decode()
    return [f"echo {b64} | base64 -d > {path}", f"chmod {mode} {path}"]


def tunnel_setup_lines(ep: TunnelEndpoint) -> list[str]:
    """Bash lines (run as root under `set -euo pipefail` and `umask 077`) that set the tunnel up."""
    user = ep.user
    return [
        "# The gateway's SSH tunnel: pinned host key, forward-only user; no service port on the network.",
        f"id -u {user} >/dev/null 2>&1 || useradd --system --no-create-home --home-dir /nonexistent "
        f"--shell /usr/sbin/nologin {user}",
        # '*': no password can match, yet the account is not locked ('!'), which sshd refuses
        # for key logins when it runs without PAM.
        f"usermod -p '*' {user}",
        *_write(HOST_KEY_PATH, ep.host_key.private_openssh, "600"),
        *_write(AUTHORIZED_KEYS_PATH, authorized_keys(ep), "644"),
        "install -d -m 755 /etc/ssh/sshd_config.d",
        *_write(DROPIN_PATH, sshd_dropin(ep), "644"),
        "grep -qs '^Include /etc/ssh/sshd_config.d/\\*.conf' /etc/ssh/sshd_config "
        "|| sed -i '1i Include /etc/ssh/sshd_config.d/*.conf' /etc/ssh/sshd_config",
        "/usr/sbin/sshd -t",
        "systemctl restart ssh 2>/dev/null || systemctl restart sshd",
    ]


def written_files(script: str) -> dict[str, str]:
    """The files a rendered script writes with `echo <base64> | base64 -d > <path>` (the inverse of
    `_write`; the tests read user data back with it)."""
    out: dict[str, str] = {}
    for m in re.finditer(r"^echo ([A-Za-z0-9+/=]+) \| base64 -d > (\S+)$", script, re.MULTILINE):
        out[m.group(2)] = base64.b64decode(m.group(1)).decode()
    return out
