"""HTTP-01 answers: the ACME manager writes one file per token, any gateway worker answers from it.

`GET /.well-known/acme-challenge/<token>` on the plain listener, for every host, is answered
here before host routing (a service's replica never sees it) and is never redirected to HTTPS
(RFC 8555 8.3: the CA asks over port 80). A key authorization is public by design; the files
only need to be readable by the workers, and a token that is not base64url is refused.
"""

from __future__ import annotations

from pathlib import Path

from gateway.tls.files import challenges_dir, valid_token
from tidegate.fsio import write_atomic

PREFIX = "/.well-known/acme-challenge/"


def put(state_dir: Path, token: str, key_authorization: str) -> None:
    if not valid_token(token):
        raise ValueError(f"not an ACME token: {token!r}")
    folder = challenges_dir(state_dir)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(folder / token, key_authorization.encode("ascii"), mode=0o600)


def remove(state_dir: Path, token: str) -> None:
    if valid_token(token):
        (challenges_dir(state_dir) / token).unlink(missing_ok=True)


def answer(state_dir: Path, path: str) -> bytes | None:
    """The key authorization for a challenge path, or None (no such token)."""
    token = path[len(PREFIX) :].partition("?")[0]
    if not valid_token(token):
        return None
    try:
        return (challenges_dir(state_dir) / token).read_bytes()
    except OSError:
        return None
