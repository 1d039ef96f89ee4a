"""The certificates a gateway worker serves, one `ssl.SSLContext` each, chosen per connection by SNI.

The HTTPS listener's context holds no certificate itself: its SNI callback hands the handshake
to the context of the name asked for - an ACME certificate issued for exactly that host, else
the `--tls-cert` file pair when one of its names (a wildcard too) covers the host, else the pair
for clients that send no name. `refresh()` (every second, off the event loop) stats the files
and loads what changed into new contexts that replace the old ones in one assignment: new
handshakes get the new certificate, connections already open keep theirs, nothing restarts. A
pair that fails to load (a key swapped before its certificate) keeps the previous context, and
the failure is logged once until it changes.
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from gateway.tls.files import CertInfo, cert_paths, certs_dir, name_matches, read_cert_info

log = logging.getLogger("tidegate.gateway.tls")

Signature = tuple[int, int, int, int, int, int]


class TlsError(Exception):
    """A certificate or key that cannot be used (the message names the file)."""


@dataclass(frozen=True)
class Loaded:
    context: ssl.SSLContext
    info: CertInfo
    signature: Signature
    covers: dict[str, bool] = field(default_factory=dict, compare=False)  # host -> a name covers it


def _signature(cert: Path, key: Path) -> Signature:
    a, b = os.stat(cert), os.stat(key)
    return (a.st_mtime_ns, a.st_size, a.st_ino, b.st_mtime_ns, b.st_size, b.st_ino)


def server_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])  # uvicorn's protocol speaks HTTP/1.1 only
    return ctx


def load_pair(cert: Path, key: Path) -> Loaded:
    """A server context for a certificate chain and its key, or TlsError naming what is wrong."""
    try:
        signature = _signature(cert, key)
        pem = cert.read_bytes()
    except OSError as e:
        raise TlsError(f"cannot read {e.filename}: {e.strerror}") from e
    try:
        info = read_cert_info(pem)
    except ValueError as e:
        raise TlsError(f"{cert} is not a PEM certificate ({e})") from e
    ctx = server_context()
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as e:
        raise TlsError(f"{key} does not fit {cert} or is not a PEM private key ({e.reason or e})") from e
    except OSError as e:
        raise TlsError(f"cannot read {e.filename or key}: {e.strerror}") from e
    return Loaded(ctx, info, signature)


class CertStore:
    """This worker's certificates: the `--tls-cert` pair (optional) and the ACME ones in the state dir."""

    def __init__(self, state_dir: Path, cert_file: str | None = None, key_file: str | None = None) -> None:
        self.state_dir = state_dir
        self.manual_paths = (Path(cert_file), Path(key_file)) if cert_file and key_file else None
        # Loaded at once: a bad --tls-cert is an error at startup, not a silent handshake failure.
        self.manual: Loaded | None = load_pair(*self.manual_paths) if self.manual_paths else None
        self.by_host: dict[str, Loaded] = {}
        self._failing: dict[str, str] = {}  # what failed to load, and why (logged once per reason)
        self.refresh()
        self.context = server_context()
        self.context.sni_callback = self._sni

    def _sni(self, sslobj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> int | None:
        chosen = self.context_for(name.lower().rstrip(".") if name else None)
        if chosen is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        sslobj.context = chosen
        return None

    def context_for(self, host: str | None) -> ssl.SSLContext | None:
        if host is not None:
            own = self.by_host.get(host)
            if own is not None:
                return own.context
            manual = self.manual
            if manual is None:
                return None
            covered = manual.covers.get(host)
            if covered is None:  # remembered per name (this runs for every plain request), per pair
                if len(manual.covers) > 4096:
                    manual.covers.clear()
                covered = manual.covers[host] = any(name_matches(p, host) for p in manual.info.names)
            return manual.context if covered else None
        return self.manual.context if self.manual is not None else None

    def has_cert(self, host: str) -> bool:
        """A certificate covers `host` (plain HTTP requests to it are redirected to HTTPS)."""
        return self.context_for(host) is not None

    def refresh(self) -> None:
        """Reload the pairs whose files changed (cheap when none did: a few stat calls)."""
        if self.manual_paths is not None:
            self.manual = self._reload("--tls-cert", self.manual_paths, self.manual) or self.manual
        found: dict[str, Loaded] = {}
        try:
            names = [n[: -len(".crt")] for n in os.listdir(certs_dir(self.state_dir)) if n.endswith(".crt")]
        except FileNotFoundError:
            names = []
        except OSError as e:
            self._fail("certs", f"cannot list {certs_dir(self.state_dir)}: {e.strerror}")
            return
        for host in names:
            try:
                paths = cert_paths(self.state_dir, host)
            except ValueError:
                continue
            loaded = self._reload(host, paths, self.by_host.get(host))
            if loaded is not None:
                found[host] = loaded
        if found.keys() != self.by_host.keys() or any(found[h] is not self.by_host[h] for h in found):
            self.by_host = found  # one assignment: the SNI callback sees the old or the new dict

    def _reload(self, label: str, paths: tuple[Path, Path], current: Loaded | None) -> Loaded | None:
        try:
            if current is not None and _signature(*paths) == current.signature:
                return current
            loaded = load_pair(*paths)
        except (OSError, TlsError) as e:
            reason = str(e) if isinstance(e, TlsError) else f"cannot read {e.filename}: {e.strerror}"
            self._fail(label, reason + (" (still serving the previous certificate)" if current else ""))
            return current
        if self._failing.pop(label, None) is not None or current is not None:
            log.info("TLS: loaded %s (%s, valid until %s)", paths[0], ", ".join(loaded.info.names), loaded.info.not_after)
        return loaded

    def _fail(self, label: str, reason: str) -> None:
        if self._failing.get(label) != reason:
            self._failing[label] = reason
            log.warning("TLS: %s", reason)
