"""API tokens: created once, shown once, stored only as SHA-256 hashes in `<state>/tokens.json`.

A token is 32 random bytes (urlsafe base64, prefixed `tg_`), so a plain SHA-256 is a safe
verifier: there is nothing to brute-force that a slow hash would protect. Verification compares
the hash against every stored hash with `hmac.compare_digest` (constant time per entry, and no
early exit on the first match). The gateway re-reads the file when its mtime changes (checked at
most every `recheck` seconds), so `tidegate token create/revoke` takes effect without a restart.
The token itself is never logged or written anywhere.

Scopes: an `inference` token (every token made before scopes existed loads as one) opens services
and the OpenAI API; an `admin` token opens those and the control API and dashboard too
(reconciler.control), so one operator token is enough for everything.

A tokens.json that cannot be read (truncated, not JSON, a newer `schema_version`) is an error
naming the file, never silently "no tokens": the commands refuse to rewrite it, and the gateway
keeps the last good set, logs the problem once and answers 503 on /healthz until it is fixed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

from tidegate.fsio import describe_os_error, write_atomic

TOKENS_FILE = "tokens.json"
SCHEMA_VERSION = 1
PREFIX = "tg_"

log = logging.getLogger("tidegate.gateway.tokens")


class TokenError(Exception):
    pass


class TokenScope(StrEnum):
    INFERENCE = "inference"  # services and /v1
    ADMIN = "admin"  # also the control API (/api/v1) and the dashboard (/ui/)


class AuthResult(StrEnum):
    OK = "ok"
    MISSING = "missing"  # -> 401
    INVALID = "invalid"  # -> 403


@dataclass(frozen=True)
class TokenRecord:
    name: str
    hash: str
    prefix: str  # first characters, for humans telling tokens apart
    created_at: float
    scope: TokenScope = TokenScope.INFERENCE


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def load_records(state_dir: Path) -> list[TokenRecord]:
    """The stored tokens ([] when there is no file). Raises TokenError naming the file and the
    cause when it cannot be read, is malformed or has a newer schema_version."""
    path = state_dir / TOKENS_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise TokenError(f"cannot read {describe_os_error(e, path)}") from e
    try:
        data = json.loads(raw)
    except ValueError as e:
        why = "the file is empty" if not raw.strip() else f"not valid JSON ({e})"
        raise TokenError(f"{path} cannot be read: {why}") from e
    if not isinstance(data, dict):
        raise TokenError(f"{path} cannot be read: expected a JSON object")
    version = data.get("schema_version", SCHEMA_VERSION)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise TokenError(
            f"{path} has schema_version {version!r}; this tidegate reads up to {SCHEMA_VERSION} "
            "and will not rewrite it (a newer tidegate wrote it)"
        )
    try:
        return [
            TokenRecord(
                name=str(t["name"]),
                hash=str(t["hash"]),
                prefix=str(t["prefix"]),
                created_at=float(t["created_at"]),
                scope=TokenScope(t.get("scope") or TokenScope.INFERENCE),
            )
            for t in data.get("tokens", [])
        ]
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise TokenError(f"{path} is malformed: a token entry lacks or mistypes {e}") from e


def _write_records(state_dir: Path, records: list[TokenRecord]) -> None:
    path = state_dir / TOKENS_FILE
    body = json.dumps({"schema_version": SCHEMA_VERSION, "tokens": [asdict(r) for r in records]}, indent=2).encode()
    try:
        write_atomic(path, body, mode=0o600)
    except OSError as e:
        raise TokenError(describe_os_error(e, path)) from e


def create_token(
    state_dir: Path, name: str, now: float | None = None, scope: TokenScope = TokenScope.INFERENCE
) -> str:
    """Store a new token's hash under `name` and return the token (the only time it exists)."""
    if not name or any(c.isspace() for c in name):
        raise TokenError("a token name must be non-empty and contain no spaces")
    records = load_records(state_dir)
    if any(r.name == name for r in records):
        raise TokenError(f"a token named {name!r} exists; revoke it first")
    token = new_token()
    created = time.time() if now is None else now
    records.append(TokenRecord(name, hash_token(token), token[: len(PREFIX) + 4], created, TokenScope(scope)))
    _write_records(state_dir, records)
    return token


def revoke_token(state_dir: Path, name: str) -> None:
    records = load_records(state_dir)
    kept = [r for r in records if r.name != name]
    if len(kept) == len(records):
        raise TokenError(f"no token named {name!r}")
    _write_records(state_dir, kept)


def bearer(header: bytes | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value, else None."""
    if not header:
        return None
    scheme, _, value = header.decode("latin-1").strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


class TokenStore:
    """The gateway's view of tokens.json, reloaded when the file changes."""

    def __init__(self, state_dir: Path, recheck: float = 1.0) -> None:
        self.path = state_dir / TOKENS_FILE
        self.state_dir = state_dir
        self.recheck = recheck
        self._hashes: tuple[bytes, ...] = ()
        self._admin: tuple[bytes, ...] = ()
        self._names: dict[bytes, str] = {}  # hash -> token name (per-token rate limits)
        self._stamp: tuple[int, int] | None = None
        self._checked = float("-inf")
        # Why the file on disk is not in use (the last good set is), or None; /healthz shows it.
        self.error: str | None = None
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        try:
            st = self.path.stat()
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp and not force:
            return
        self._stamp = stamp  # a broken file is reported once, not re-read on every check
        try:
            records = load_records(self.state_dir)
        except TokenError as e:
            if str(e) != self.error:
                log.error("%s; keeping the %d tokens loaded before", e, len(self._hashes))
            self.error = str(e)
            return
        if self.error is not None:
            log.warning("%s is readable again: %d tokens", self.path, len(records))
        self.error = None
        self._hashes = tuple(r.hash.encode() for r in records)
        self._admin = tuple(r.hash.encode() for r in records if r.scope is TokenScope.ADMIN)
        self._names = {r.hash.encode(): r.name for r in records}

    def check(self, header: bytes | None, now: float) -> AuthResult:
        return self.identify(header, now)[0]

    def identify(self, header: bytes | None, now: float) -> tuple[AuthResult, str | None]:
        """The verdict on an Authorization header and, when it is valid, the token's name."""
        if now - self._checked >= self.recheck:
            self._checked = now
            self.refresh()
        token = bearer(header)
        if token is None:
            return AuthResult.MISSING, None
        digest = hash_token(token).encode()
        ok = False
        for h in self._hashes:
            ok |= hmac.compare_digest(h, digest)
        # The name is looked up only once the constant-time scan matched.
        return (AuthResult.OK, self._names.get(digest)) if ok else (AuthResult.INVALID, None)

    def scope_of(self, token: str | None, now: float) -> TokenScope | None:
        """The scope of a presented token (None: no such token), re-reading the file when it changed."""
        if now - self._checked >= self.recheck:
            self._checked = now
            self.refresh()
        if not token:
            return None
        digest = hash_token(token).encode()
        admin = known = False
        for h in self._hashes:
            known |= hmac.compare_digest(h, digest)
        for h in self._admin:
            admin |= hmac.compare_digest(h, digest)
        if admin:
            return TokenScope.ADMIN
        return TokenScope.INFERENCE if known else None
