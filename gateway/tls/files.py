"""Where TLS material lives in the state directory, and reading a certificate's names and dates.

Both sides use these paths: the ACME manager (one per gateway, in the parent process) writes
certificates and HTTP-01 answers, every worker's `CertStore` and challenge handler read them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

TLS_DIR = "tls"
# base64url: an ACME token never contains anything else, so a path can never escape the folder.
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
_HOST = re.compile(r"^[a-z0-9*]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")


def tls_dir(state_dir: Path) -> Path:
    return state_dir / TLS_DIR


def certs_dir(state_dir: Path) -> Path:
    return tls_dir(state_dir) / "certs"


def challenges_dir(state_dir: Path) -> Path:
    return tls_dir(state_dir) / "acme-challenges"


def account_key_path(state_dir: Path) -> Path:
    return tls_dir(state_dir) / "acme-account.key"


def cert_paths(state_dir: Path, host: str) -> tuple[Path, Path]:
    """(full chain, private key) of the ACME certificate for `host`."""
    if not valid_host(host):
        raise ValueError(f"not a host name: {host!r}")
    base = certs_dir(state_dir)
    return base / f"{host}.crt", base / f"{host}.key"


def valid_host(host: str) -> bool:
    return len(host) <= 253 and bool(_HOST.match(host))


def valid_token(token: str) -> bool:
    return bool(_TOKEN.match(token))


@dataclass(frozen=True)
class CertInfo:
    names: tuple[str, ...]  # DNS names of the leaf (SANs), lower case
    not_before: datetime
    not_after: datetime

    def lifetime(self) -> float:
        return (self.not_after - self.not_before).total_seconds()


def read_cert_info(pem: bytes) -> CertInfo:
    """The leaf's DNS names and validity (ValueError for something that is not a PEM certificate)."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(n.lower() for n in san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    if not names:
        cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        names = tuple(str(c.value).lower() for c in cns)
    return CertInfo(names, cert.not_valid_before_utc, cert.not_valid_after_utc)


def name_matches(pattern: str, host: str) -> bool:
    """RFC 6125: `*.example.com` covers exactly one label (`a.example.com`, not `a.b.example.com`)."""
    if pattern.startswith("*."):
        head, dot, rest = host.partition(".")
        return bool(head) and bool(dot) and rest == pattern[2:]
    return pattern == host


def utcnow() -> datetime:
    return datetime.now(UTC)
