"""Pebble, Let's Encrypt's ACME test CA, on loopback, with pebble-challtestsrv as its DNS.

Every name resolves to 127.0.0.1 (challtestsrv's default A record; no AAAA), so Pebble validates
HTTP-01 by connecting to 127.0.0.1:<http_port> - the plain listener of the gateway under test.
Pebble's own API is HTTPS with a certificate made here (`wfe_cert`, trusted by the ACME client);
the root that signs issued certificates is generated per run and read from its management API
(`root_file()`). Both binaries come from the Debian package `pebble` (Makefile SYSTEM_PACKAGES).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import shutil
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.support.sshd import free_port

PEBBLE = "/usr/bin/pebble"
CHALLTESTSRV = "/usr/bin/pebble-challtestsrv"


def require_pebble() -> None:
    for binary in (PEBBLE, CHALLTESTSRV):
        if not shutil.which(binary):
            pytest.fail(f"{binary} is missing: install the Debian package pebble (make system-packages)")


def _self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pebble")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "wfe.crt", folder / "wfe.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_file, key_file


class Pebble:
    def __init__(self, folder: Path, http_port: int, validity: int | None = None) -> None:
        require_pebble()
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.wfe_cert, wfe_key = _self_signed(folder)
        self.port, self.mgmt_port, dns_port = free_port(), free_port(), free_port()
        config: dict[str, object] = {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.mgmt_port}",
            "certificate": str(self.wfe_cert),
            "privateKey": str(wfe_key),
            "httpPort": http_port,
            "tlsPort": free_port(),  # TLS-ALPN-01 is not used; nothing listens there
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
        if validity is not None:
            config["certificateValidityPeriod"] = validity
        (folder / "pebble.json").write_text(json.dumps({"pebble": config}))
        self.log = open(folder / "pebble.log", "wb")  # noqa: SIM115  # closed in stop()
        self.dns = subprocess.Popen(
            [CHALLTESTSRV, "-dns01", f"127.0.0.1:{dns_port}", "-http01", "", "-https01", "", "-tlsalpn01", "",
             "-management", f"127.0.0.1:{free_port()}", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"}
        self.proc = subprocess.Popen(
            [PEBBLE, "-config", str(folder / "pebble.json"), "-dnsserver", f"127.0.0.1:{dns_port}"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env,
        )
        self.directory = f"https://127.0.0.1:{self.port}/dir"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(self.directory, verify=ssl.create_default_context(cafile=str(self.wfe_cert)), timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"pebble did not start: {(folder / 'pebble.log').read_text()[-2000:]}")
            time.sleep(0.1)

    def root_file(self) -> Path:
        """The root that signs this run's certificates, as a file for `curl --cacert` / `verify=`."""
        pem = httpx.get(f"https://127.0.0.1:{self.mgmt_port}/roots/0", verify=ssl.create_default_context(cafile=str(self.wfe_cert)), timeout=5).text
        path = self.folder / "root.pem"
        path.write_text(pem)
        return path

    def stop(self) -> None:
        for proc in (self.proc, self.dns):
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.log.close()

