"""The tunnel's key material and the instance-side user data, without a network: keys derive
deterministically (a retried launch sends identical user data) and differ per launch, the OpenSSH
encoding round-trips through `cryptography` and `ssh-keygen`, the key store is private, and the
rendered lines restrict the forward-only user the way sshd expects."""

from __future__ import annotations

import os
import stat
import subprocess
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backends.cloud.ssh_keys import KeyStore, derive_host_key, public_line
from backends.cloud.tunnel_userdata import (
    AUTHORIZED_KEYS_PATH,
    DROPIN_PATH,
    HOST_KEY_PATH,
    TunnelEndpoint,
    authorized_keys,
    tunnel_setup_lines,
    written_files,
)

SECRET = bytes(range(32))


def _public_of(private_openssh: str) -> str:
    key = serialization.load_ssh_private_key(private_openssh.encode(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return public_line(key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def test_host_keys_are_deterministic_per_label_and_distinct_across_labels() -> None:
    a1, a2 = derive_host_key(SECRET, "aws:token-a"), derive_host_key(SECRET, "aws:token-a")
    b = derive_host_key(SECRET, "aws:token-b")
    other_install = derive_host_key(bytes(32), "aws:token-a")
    assert a1 == a2 and a1.private_openssh == a2.private_openssh
    assert len({a1.public, b.public, other_install.public}) == 3
    assert _public_of(a1.private_openssh) == a1.public
    assert "PRIVATE" not in repr(a1) and a1.public in repr(a1)  # never printed by accident


def test_ssh_keygen_reads_the_derived_private_key(tmp_path: Path) -> None:
    key = derive_host_key(SECRET, "azure:vm")
    path = tmp_path / "host"
    path.write_text(key.private_openssh)
    path.chmod(0o600)
    out = subprocess.run(["ssh-keygen", "-y", "-f", str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.split()[:2] == key.public.split()


def test_key_store_is_private_stable_and_created_once_under_concurrency(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "ssh")
    publics: list[str] = []
    threads = [threading.Thread(target=lambda: publics.append(store.client_public())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(publics)) == 1
    again = KeyStore(tmp_path / "ssh")  # another process over the same state dir
    assert again.client_public() == publics[0]
    assert again.host_key("x") == store.host_key("x")
    assert stat.S_IMODE(os.stat(tmp_path / "ssh").st_mode) == 0o700
    for name in ("id_ed25519", "host_key_secret"):
        assert stat.S_IMODE(os.stat(tmp_path / "ssh" / name).st_mode) == 0o600
    assert sorted(p.name for p in (tmp_path / "ssh").iterdir()) == ["host_key_secret", "id_ed25519"]
    assert KeyStore(tmp_path / "elsewhere").client_public() != publics[0]


def _endpoint(**kw: object) -> TunnelEndpoint:
    base: dict[str, object] = {
        "client_public": derive_host_key(b"c" * 32, "client").public,
        "host_key": derive_host_key(SECRET, "l"),
        "service_port": 8000,
    }
    base.update(kw)
    return TunnelEndpoint(**base)  # type: ignore[arg-type]


def test_user_data_lines_write_the_key_files_with_their_modes() -> None:
    ep = _endpoint()
    script = "\n".join(tunnel_setup_lines(ep))
    files = written_files(script)
    assert set(files) == {HOST_KEY_PATH, AUTHORIZED_KEYS_PATH, DROPIN_PATH}
    assert files[HOST_KEY_PATH] == ep.host_key.private_openssh
    assert files[AUTHORIZED_KEYS_PATH] == authorized_keys(ep)
    assert authorized_keys(ep).startswith('restrict,port-forwarding,permitopen="127.0.0.1:8000" ssh-ed25519 ')
    assert f"chmod 600 {HOST_KEY_PATH}" in script and f"chmod 644 {AUTHORIZED_KEYS_PATH}" in script
    assert "--shell /usr/sbin/nologin tidegate-tunnel" in script
    assert "Port 22\n" in files[DROPIN_PATH] and "ForceCommand /bin/false" in files[DROPIN_PATH]
    # The drop-in ends with the Match block, so nothing after it is scoped to the tunnel user.
    assert files[DROPIN_PATH].rstrip().splitlines()[-1].strip() == "ForceCommand /bin/false"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        pytest.param("user", "root; rm -rf /", "invalid tunnel user", id="user-injection"),
        pytest.param("user", "Root", "invalid tunnel user", id="user-uppercase"),
        pytest.param("client_public", "ssh-rsa AAAA x\nssh-ed25519 AAAA", "one 'ssh-ed25519", id="two-keys"),
        pytest.param("client_public", 'command="sh" ssh-ed25519 AAAA', "one 'ssh-ed25519", id="key-options"),
        pytest.param("service_port", 0, "invalid port", id="port-zero"),
        pytest.param("ssh_port", 70000, "invalid port", id="port-too-big"),
    ],
)
def test_endpoint_refuses_values_that_would_widen_the_user_data(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _endpoint(**{field: value})
