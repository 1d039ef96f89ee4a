"""Checks on a cloud replica's user data: the tunnel's key material is there and pinned, and no value
from the reconciler's own environment is (only the service's declared env may travel)."""

from __future__ import annotations

import base64
import re

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backends.cloud.ssh_keys import public_line
from backends.cloud.tunnel_userdata import AUTHORIZED_KEYS_PATH, DROPIN_PATH, HOST_KEY_PATH, written_files

# Values the reconciler's process environment holds in these tests; none may reach an instance.
RECONCILER_ONLY = {
    "AWS_SECRET_ACCESS_KEY": "aws-secret-of-the-reconciler-0123",
    "GITHUB_TOKEN": "ghp_reconcilerOnlyToken0123456789",
    "TIDEGATE_WEBHOOK_SECRET": "webhook-secret-of-the-reconciler",
}


def decoded_text(script: str) -> str:
    """The script with every base64 blob it decodes appended (env file, run script, key files)."""
    blobs = re.findall(r"echo ([A-Za-z0-9+/=]{8,}) \| base64 -d", script)
    return script + "\n".join(base64.b64decode(b).decode(errors="replace") for b in blobs)


def check_tunnel_user_data(
    script: str, *, client_public: str, pinned_host_key: str, service_port: int, user: str = "tidegate-tunnel"
) -> None:
    files = written_files(script)
    assert files[AUTHORIZED_KEYS_PATH] == (
        f'restrict,port-forwarding,permitopen="127.0.0.1:{service_port}" {client_public} tidegate-gateway\n'
    )
    key = serialization.load_ssh_private_key(files[HOST_KEY_PATH].encode(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert public_line(raw) == pinned_host_key, "the host key in user data is the one the tunnel pins"
    dropin = files[DROPIN_PATH]
    assert f"Match User {user}" in dropin and f"PermitOpen 127.0.0.1:{service_port}" in dropin
    assert f"HostKey {HOST_KEY_PATH}" in dropin
    text = decoded_text(script)
    for name, value in RECONCILER_ONLY.items():
        assert value not in text, f"{name} from the reconciler's environment reached the user data"
