"""The ways etcd fails a client, and the one-line explanations of a refusal.

Why a module of its own: telling "etcd is not there" (retry, stand by, serve what is on disk) from
"etcd will not serve this client as configured" (stop and name the option to fix) is a table of
the texts etcd, requests and the TLS layer produce; it grew next to the client until the client
module was hard to read. `tidegate.etcd` re-exports the errors, so callers import them from there.
"""

from __future__ import annotations

from typing import Protocol

USER_ENV = "TIDEGATE_ETCD_USER"
PASSWORD_ENV = "TIDEGATE_ETCD_PASSWORD"


class Configured(Protocol):
    """What a refusal message names of the client's configuration (an `EtcdLocation`)."""

    @property
    def cacert(self) -> str | None: ...
    @property
    def cert(self) -> str | None: ...
    @property
    def tls(self) -> bool: ...
    @property
    def user(self) -> str | None: ...
    @property
    def prefix(self) -> str: ...


class EtcdError(Exception):
    """etcd answered with an error, or a location/option is invalid."""


class EtcdUnavailable(EtcdError):
    """No endpoint answered (down, partitioned, or without quorum)."""


class EtcdRefused(EtcdError):
    """etcd answered but will not serve this client as configured: its certificate is not trusted,
    it wants a client certificate, the user or password is wrong, or the user's role does not
    cover the prefix. Retrying cannot help; the message names the option to fix."""


# What etcd or the TLS layer says when it refuses this client, and what to change (see refusal).
_TLS_UNTRUSTED = ("CERTIFICATE_VERIFY_FAILED",)
# TLS 1.3 sends the server's verdict on the client certificate after the handshake: the client
# sees the alert, or (as often) only the connection ending mid-protocol.
_TLS_CLIENT_CERT = (
    "CERTIFICATE_REQUIRED",
    "BAD_CERTIFICATE",
    "UNKNOWN_CA",
    "certificate required",
    "EOF occurred in violation of protocol",
)
_TLS_NOT_SPOKEN = ("WRONG_VERSION_NUMBER", "record layer failure")
_PLAIN_TO_TLS = ("HTTP request to an HTTPS server",)


def refusal(detail: str, loc: Configured, endpoint: str) -> str | None:
    """A one-line explanation naming the option to fix, when `detail` (an error from requests or
    an error answer of etcd) says etcd refuses this client as configured; None otherwise."""
    where = f"etcd at {endpoint}"
    if any(m in detail for m in _TLS_UNTRUSTED):
        if loc.cacert:
            return f"{where}: its server certificate is not signed by the CA in --etcd-cacert {loc.cacert}"
        return f"{where}: its server certificate is not trusted; pass the CA that signed it with --etcd-cacert FILE"
    if any(m in detail for m in _TLS_CLIENT_CERT):
        if loc.cert:
            return f"{where} refused the client certificate in --etcd-cert {loc.cert} (not signed by its CA)"
        return f"{where} requires a client certificate: pass --etcd-cert FILE and --etcd-key FILE"
    if loc.tls and any(m in detail for m in _TLS_NOT_SPOKEN):
        return f"{where} does not speak TLS: use etcd:// without --etcd-cacert/--etcd-cert/--etcd-key"
    if any(m in detail for m in _PLAIN_TO_TLS):
        return f"{where} speaks TLS: use etcds:// (with --etcd-cacert FILE for a private CA)"
    if "user name is empty" in detail:
        return f"{where} has authentication enabled: set ${USER_ENV} and ${PASSWORD_ENV}"
    if "authentication failed" in detail:
        return f"{where} refused user {loc.user!r}: wrong user or password (${USER_ENV}, ${PASSWORD_ENV})"
    if "permission denied" in detail:
        who = f"user {loc.user!r}" if loc.user else "this client"
        return (
            f"{where}: permission denied for {who} on /{loc.prefix}/: its role needs readwrite on every "
            f"key under it (etcdctl role grant-permission ROLE --prefix=true readwrite /{loc.prefix}/)"
        )
    return None


def detail_of(e: BaseException) -> str:
    return str(getattr(e, "detail_text", None) or e)
