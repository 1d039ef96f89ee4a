"""A real etcd with client TLS (certificates made here) or with auth enabled, for the security drills.

TLS: a CA, a server certificate for 127.0.0.1/localhost and a client certificate, all made with
`cryptography` in the test's folder; etcd runs with --cert-file/--key-file/--trusted-ca-file and
--client-cert-auth (a client without a certificate that CA signed is refused). A second CA that
signed nothing etcd knows stands in for "the wrong CA".

Auth: users and roles are made through etcd's own v3 JSON gateway (`/v3/auth/...`, the API the
Debian etcd-server serves; no etcdctl needed): `root`, `tidegate` (readwrite on one prefix only)
and `outsider` (readwrite on another prefix), then `/v3/auth/enable`.

One member each: what is tested is the transport and the credentials, not raft.
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.etcd_cluster import ETCD, free_port, require_etcd
from tidegate.etcd import range_end

AUTH_PREFIX = "tg-auth"
OTHER_PREFIX = "tg-other"


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing etcd serves


def _write_key(path: Path, key: object) -> None:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(
        key.private_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)


def make_pki(folder: Path) -> Pki:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    pem = serialization.Encoding.PEM

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
            )
            .sign(key, hashes.SHA256())
        )
        return cert, key

    def leaf(
        cn: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], server: bool
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        usage = (
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            if server
            else [ExtendedKeyUsageOID.CLIENT_AUTH]
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(issuer[0].subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        return builder.sign(issuer[1], hashes.SHA256()), key

    root = ca("tidegate test CA")
    other = ca("some other CA")
    server = leaf("etcd", root, server=True)
    client = leaf("tidegate", root, server=False)
    pki = Pki(
        ca=folder / "ca.pem",
        server_cert=folder / "server.pem",
        server_key=folder / "server-key.pem",
        client_cert=folder / "client.pem",
        client_key=folder / "client-key.pem",
        other_ca=folder / "other-ca.pem",
    )
    pki.ca.write_bytes(root[0].public_bytes(pem))
    pki.other_ca.write_bytes(other[0].public_bytes(pem))
    pki.server_cert.write_bytes(server[0].public_bytes(pem))
    _write_key(pki.server_key, server[1])
    pki.client_cert.write_bytes(client[0].public_bytes(pem))
    _write_key(pki.client_key, client[1])
    return pki


class SecureEtcd:
    """One etcd member on loopback, with client TLS (`pki`) or not."""

    def __init__(self, folder: Path, pki: Pki | None = None, extra: tuple[str, ...] = ()) -> None:
        require_etcd()
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.pki = pki
        self.port = free_port()
        self.peer_port = free_port()
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.users: dict[str, str] = {}  # name -> password, when auth is on

    @property
    def scheme(self) -> str:
        return "https" if self.pki else "http"

    def url(self, prefix: str) -> str:
        return f"{'etcds' if self.pki else 'etcd'}://127.0.0.1:{self.port}/{prefix}"

    def http(self) -> httpx.Client:
        if self.pki is None:
            return httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=5.0)
        import ssl

        ctx = ssl.create_default_context(cafile=str(self.pki.ca))
        ctx.load_cert_chain(str(self.pki.client_cert), str(self.pki.client_key))
        return httpx.Client(base_url=f"https://127.0.0.1:{self.port}", verify=ctx, timeout=5.0)

    def start(self) -> None:
        client = f"{self.scheme}://127.0.0.1:{self.port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        cmd = [
            ETCD, "--name", "s0", "--data-dir", str(self.folder / "data"),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"s0={peer}", "--initial-cluster-state", "new",
            "--log-level", "error", "--logger", "zap", *self.extra,
        ]  # fmt: skip
        if self.pki is not None:
            cmd += [
                "--cert-file", str(self.pki.server_cert), "--key-file", str(self.pki.server_key),
                "--trusted-ca-file", str(self.pki.ca), "--client-cert-auth",
            ]  # fmt: skip
        with open(self.folder / "etcd.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        self.wait_healthy()

    def wait_healthy(self, timeout: float = 30.0) -> None:
        import time

        deadline = time.monotonic() + timeout
        with self.http() as http:
            while time.monotonic() < deadline:
                try:
                    r = http.get("/health")
                    if r.status_code == 200 and r.json().get("health") == "true":
                        return
                except (httpx.HTTPError, ValueError):
                    pass
                time.sleep(0.1)
        raise RuntimeError(
            f"etcd not healthy in {timeout}s: {(self.folder / 'etcd.log').read_text()[-2000:]}"
        )

    def enable_auth(self) -> None:
        """root, `tidegate` (readwrite on /tg-auth/ only), `outsider` (readwrite on /tg-other/ only),
        `reader` (read only on /tg-auth/)."""
        with self.http() as http:

            def post(path: str, body: dict[str, object]) -> None:
                r = http.post(f"/v3/auth/{path}", json=body)
                assert r.status_code == 200, f"/v3/auth/{path}: {r.status_code} {r.text}"

            for user, prefix, kind in (
                ("tidegate", AUTH_PREFIX, "READWRITE"),
                ("outsider", OTHER_PREFIX, "READWRITE"),
                ("reader", AUTH_PREFIX, "READ"),
            ):
                role = f"{user}-role"
                key = f"/{prefix}/"
                post("role/add", {"name": role})
                perm = {"permType": kind, "key": _b64(key), "range_end": range_end(key)}
                post("role/grant", {"name": role, "perm": perm})
                self.users[user] = secrets.token_urlsafe(12)
                post("user/add", {"name": user, "password": self.users[user]})
                post("user/grant", {"user": user, "role": role})
            self.users["root"] = secrets.token_urlsafe(12)
            post("user/add", {"name": "root", "password": self.users["root"]})
            post("role/add", {"name": "root"})
            post("user/grant", {"user": "root", "role": "root"})
            post("enable", {})

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


@pytest.fixture(scope="session")
def etcd_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def etcd_tls(tmp_path_factory: pytest.TempPathFactory, etcd_pki: Pki) -> Iterator[SecureEtcd]:
    """etcd that speaks only TLS and wants a client certificate signed by `etcd_pki.ca`."""
    server = SecureEtcd(tmp_path_factory.mktemp("etcd-tls"), etcd_pki)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def etcd_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureEtcd]:
    """etcd with auth enabled: `users` holds the passwords of root, tidegate, outsider and reader."""
    server = SecureEtcd(tmp_path_factory.mktemp("etcd-auth"))
    try:
        server.start()
        server.enable_auth()
        yield server
    finally:
        server.close()
