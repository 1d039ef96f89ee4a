"""SSH key material for the gateway <-> cloud replica tunnel: the installation's client key and
each instance's pinned host key.

Why this module exists: the tunnel is only as good as its keys, and both halves have rules that
are easy to get wrong when scattered:

- The installation's **client key** (ed25519) lives in `<state>/ssh/id_ed25519`, 0600 in a 0700
  folder, created on first use. Its public half goes into every instance's user data as the only
  key the forward-only tunnel user accepts.
- Each instance's **host key** is generated here, on the tidegate side, so it is known before the
  first contact and pinned (no trust on first use). It is *derived* — HMAC-SHA256 of a per-
  installation secret (`<state>/ssh/host_key_secret`, 0600) and a label naming the launch — for
  one reason: EC2's `ClientToken` makes a retried `run_instances` return the instance that was
  already started only when every parameter, user data included, is byte-identical. A random key
  per call would turn a lost response into a parameter-mismatch error. The private half exists in
  memory while the user data is rendered and in that user data; it is never logged or written to
  disk here. The public half rides on the instance as a tag, which is what the tunnel pins.

The OpenSSH private-key encoding is written here rather than by `cryptography`, whose encoder puts
a random check value in every export (that would break the byte-identical user data as well).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import struct
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tidegate import fsio

KEY_TYPE = "ssh-ed25519"


@dataclass(frozen=True)
class HostKey:
    """An instance's SSH host key: the OpenSSH private key file's text and the public key line."""

    private_openssh: str
    public: str  # "ssh-ed25519 AAAA…" (no comment)

    def __repr__(self) -> str:  # never print the private half by accident
        return f"HostKey(public={self.public!r})"


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _public_blob(public: bytes) -> bytes:
    return _string(KEY_TYPE.encode()) + _string(public)


def public_line(public: bytes) -> str:
    return f"{KEY_TYPE} {base64.b64encode(_public_blob(public)).decode()}"


def openssh_private_key(seed: bytes, comment: str = "") -> str:
    """The unencrypted `openssh-key-v1` file for an ed25519 seed, byte-for-byte deterministic."""
    key = Ed25519PrivateKey.from_private_bytes(seed)
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    check = hashlib.sha256(b"tidegate-check\0" + public).digest()[:4]
    private = check + check + _string(KEY_TYPE.encode()) + _string(public) + _string(seed + public)
    private += _string(comment.encode())
    private += bytes(range(1, 1 + (-len(private)) % 8))  # pad to the "none" cipher's block size
    body = b"openssh-key-v1\0" + _string(b"none") + _string(b"none") + _string(b"")
    body += struct.pack(">I", 1) + _string(_public_blob(public)) + _string(private)
    text = base64.b64encode(body).decode()
    lines = [text[i : i + 70] for i in range(0, len(text), 70)]
    return "-----BEGIN OPENSSH PRIVATE KEY-----\n" + "\n".join(lines) + "\n-----END OPENSSH PRIVATE KEY-----\n"


def derive_host_key(secret: bytes, label: str) -> HostKey:
    """The host key for one launch: the same (secret, label) always gives the same key."""
    seed = hmac.new(secret, b"tidegate-host-key\0" + label.encode(), hashlib.sha256).digest()
    public = (
        Ed25519PrivateKey.from_private_bytes(seed)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    return HostKey(openssh_private_key(seed, "tidegate-host"), public_line(public))


@dataclass(frozen=True)
class KeyFingerprint:
    """What may be shown and stored about the key material: hashes, never the keys. The client
    key's is OpenSSH's `SHA256:…` of its public half; the host-key secret's is a domain-separated
    SHA-256 of the 32 random bytes (not invertible, and useless for deriving a host key)."""

    client: str
    host_key_secret: str


def ssh_fingerprint(public: str) -> str:
    blob = base64.b64decode(public.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def secret_fingerprint(secret: bytes) -> str:
    return "sha256:" + hashlib.sha256(b"tidegate-host-key-secret-fingerprint\0" + secret).hexdigest()[:32]


class KeyStore:
    """`<state>/ssh`: the client key and the host-key secret, created on first use (0700 / 0600)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()

    @property
    def client_key_path(self) -> Path:
        return self.directory / "id_ed25519"

    @property
    def _secret_path(self) -> Path:
        return self.directory / "host_key_secret"

    def _ensure_dir(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.directory, 0o700)

    def _read_or_create(self, path: Path, make: bytes) -> bytes:
        """The file's bytes; when it is missing, `make` is written and linked into place, so two
        creators (threads or processes) agree on the one that won and nobody sees half a file."""
        with self._lock:
            try:
                return path.read_bytes()
            except FileNotFoundError:
                pass
            self._ensure_dir()
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{path.name}.")  # 0600
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(make)
                    f.flush()
                    os.fsync(f.fileno())
                with contextlib.suppress(FileExistsError):
                    os.link(tmp, path)
            finally:
                os.unlink(tmp)
            fsio.fsync_dir(self.directory)
            return path.read_bytes()

    def client_private_openssh(self) -> str:
        """The installation's client key (OpenSSH text); created the first time it is asked for."""
        seed = secrets.token_bytes(32)
        return self._read_or_create(self.client_key_path, openssh_private_key(seed, "tidegate").encode()).decode()

    def client_public(self) -> str:
        text = self.client_private_openssh()
        key = serialization.load_ssh_private_key(text.encode(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{self.client_key_path}: not an ed25519 key")
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return public_line(raw)

    @property
    def files(self) -> tuple[Path, Path]:
        """The two files that are the installation's tunnel key material (copied together)."""
        return self.client_key_path, self._secret_path

    def has_material(self) -> bool:
        return all(p.is_file() for p in self.files)

    def ensure(self) -> None:
        """Create the client key and the host-key secret if they are missing."""
        self.client_private_openssh()
        self._read_or_create(self._secret_path, secrets.token_bytes(32))

    def fingerprint(self) -> KeyFingerprint | None:
        """Public fingerprints of the key material here, or None when a file is missing; nothing
        is created. Raises ValueError for a file that is not key material."""
        if not self.has_material():
            return None
        return KeyFingerprint(
            client=ssh_fingerprint(self.client_public()),
            host_key_secret=secret_fingerprint(self._secret_path.read_bytes()),
        )

    def host_key(self, label: str) -> HostKey:
        secret = self._read_or_create(self._secret_path, secrets.token_bytes(32))
        if len(secret) < 32:
            raise ValueError(f"{self._secret_path}: shorter than 32 bytes")
        return derive_host_key(secret, label)
