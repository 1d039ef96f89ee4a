"""Getting one certificate from an ACME CA (RFC 8555) with HTTP-01, through the certbot project's `acme`.

The protocol is the library's; this module holds what is ours: the account key in the state
directory (created once, 0600, so restarts reuse the account), one order per host with a fresh
key, the challenge answers handed to `challenges.put` for the gateway to serve, and errors turned
into one line (`AcmeFailure`) a user can act on - the CA's problem detail, not a traceback.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.tls import challenges
from gateway.tls.files import account_key_path, cert_paths, tls_dir
from tidegate.fsio import write_atomic

LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
USER_AGENT = "tidegate"


class AcmeFailure(Exception):
    """An issuance that failed, with the reason in one line."""


@dataclass(frozen=True)
class AcmeAccount:
    email: str
    directory: str = LETS_ENCRYPT
    ca_bundle: str | None = None  # a private CA's root for the directory's own HTTPS (e.g. Pebble's)
    timeout: float = 90.0  # per order: validation and finalization


def _private_key_pem(path: Path) -> bytes:
    """The key at `path`, created (EC P-256, 0600) when missing."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, pem, mode=0o600)
    return pem


def _new_key_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def describe(error: BaseException) -> str:
    """One line for an ACME failure: the CA's problem document when there is one."""
    from acme import errors, messages

    if isinstance(error, errors.ValidationError):
        details = []
        for authzr in error.failed_authzrs:
            for chall in authzr.body.challenges:
                if chall.error is not None:
                    details.append(f"{authzr.body.identifier.value}: {_problem(chall.error)}")
        return "validation failed: " + "; ".join(details)
    if isinstance(error, errors.TimeoutError):
        return "the CA did not validate or finalize the order in time"
    if isinstance(error, messages.Error):
        return _problem(error)
    # requests' errors (CA unreachable, TLS to the directory failed), OSError, the library's own
    return f"{type(error).__name__}: {error}".splitlines()[0][:400]


def _problem(error: Any) -> str:
    kind = str(getattr(error, "typ", "") or "").rpartition(":")[2]
    detail = getattr(error, "detail", None) or str(error)
    return f"{detail} ({kind})" if kind else str(detail)


class AcmeClient:
    """One account on one CA. Not thread-safe: the manager's single thread uses it."""

    def __init__(self, state_dir: Path, account: AcmeAccount) -> None:
        self.state_dir = state_dir
        self.account = account
        self._client: Any = None

    def _connect(self) -> Any:
        from acme import client, errors, messages
        from cryptography.hazmat.primitives import serialization
        from josepy.jwa import ES256
        from josepy.jwk import JWKEC

        if self._client is not None:
            return self._client
        tls_dir(self.state_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        key = serialization.load_pem_private_key(_private_key_pem(account_key_path(self.state_dir)), password=None)
        jwk = JWKEC(key=key)
        net = client.ClientNetwork(jwk, alg=ES256, user_agent=USER_AGENT, timeout=30)
        if self.account.ca_bundle:
            net.verify_ssl = self.account.ca_bundle  # type: ignore[assignment]  # requests takes a CA file here
        directory = client.ClientV2.get_directory(self.account.directory, net)
        acme = client.ClientV2(directory, net)
        registration = messages.NewRegistration.from_data(email=self.account.email, terms_of_service_agreed=True)
        try:
            acme.new_account(registration)
        except errors.ConflictError as e:  # this key has an account already: use it
            acme.query_registration(messages.RegistrationResource(uri=e.location, body=messages.Registration()))
        self._client = acme
        return acme

    def issue(self, host: str) -> None:
        """Get a certificate for `host` and store it (key 0600) where the gateway's workers load it."""
        from acme import crypto_util, messages
        from acme.challenges import HTTP01

        try:
            acme = self._connect()
            key_pem = _new_key_pem()
            order = acme.new_order(crypto_util.make_csr(key_pem, [host]))
            tokens: list[str] = []
            try:
                for authz in order.authorizations:
                    if authz.body.status == messages.STATUS_VALID:
                        continue  # the CA reused an earlier validation
                    chall = next((c for c in authz.body.challenges if isinstance(c.chall, HTTP01)), None)
                    if chall is None:
                        raise AcmeFailure("the CA offers no http-01 challenge for " + host)
                    response, validation = chall.response_and_validation(acme.net.key)
                    token = chall.chall.encode("token")
                    challenges.put(self.state_dir, token, validation)
                    tokens.append(token)
                    acme.answer_challenge(chall, response)
                deadline = dt.datetime.now() + dt.timedelta(seconds=self.account.timeout)
                order = acme.poll_and_finalize(order, deadline=deadline)
            finally:
                for token in tokens:
                    challenges.remove(self.state_dir, token)
        except AcmeFailure:
            raise
        except Exception as e:  # the library's errors, requests', the CA's: one line each
            self._client = None if not _is_acme_problem(e) else self._client
            raise AcmeFailure(describe(e)) from e
        cert, key = cert_paths(self.state_dir, host)
        cert.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Key first: a worker reloading between the two writes sees a mismatch and keeps the old pair.
        write_atomic(key, key_pem, mode=0o600)
        write_atomic(cert, order.fullchain_pem.encode("ascii"), mode=0o644)


def _is_acme_problem(error: BaseException) -> bool:
    from acme import errors, messages

    return isinstance(error, messages.Error | errors.ValidationError | errors.TimeoutError)
