"""The gateway's tuning options, shared by `tidegate gateway` and `tidegate up` (same names, same defaults).

`add_gateway_options` adds them to a parser; `gateway_overrides` turns parsed arguments into
`GatewaySettings` fields (only those given on the command line differ from the defaults).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from gateway.settings import GatewaySettings, parse_listen

_D = GatewaySettings.__dataclass_fields__


def _default(name: str) -> Any:
    return _D[name].default


# (flag, settings field, type, help)
_OPTIONS: tuple[tuple[str, str, type, str], ...] = (
    ("--max-body", "max_body_bytes", int, "request body limit in bytes"),
    ("--connect-timeout", "connect_timeout", float, "seconds to connect to a replica"),
    ("--first-byte-timeout", "first_byte_timeout", float, "max seconds from a request sent to the replica's response head (0: none)"),
    ("--read-timeout", "read_timeout", float, "max seconds between two chunks of a replica's response (0: none)"),
    ("--hold-timeout", "hold_timeout", float, "max seconds a request waits for a cold start"),
    ("--max-connections", "max_connections", int, "client connections per worker (0: half the open-file limit)"),
    ("--header-timeout", "header_timeout", float, "seconds a client has to send a request's head (also before its first)"),
    ("--keepalive-timeout", "keepalive_timeout", float, "seconds an idle client connection is kept between requests"),
    ("--shutdown-grace", "shutdown_grace", float, "seconds requests in flight get on shutdown before they are cancelled"),
    ("--template-timeout", "template_timeout", float, "max seconds to render a TGI chat template"),
    ("--max-header-bytes", "max_header_bytes", int, "size of a client's request head in bytes"),
    ("--hold-queue", "hold_queue", int, "requests held per service during a cold start"),
    ("--template-max-bytes", "template_max_bytes", int, "output of a TGI chat template in bytes"),
    ("--template-workers", "template_workers", int, "processes rendering chat templates per gateway worker"),
    ("--max-tgi-response", "max_tgi_response_bytes", int, "a non-streaming TGI answer in bytes"),
)


def add_gateway_options(parser: argparse.ArgumentParser) -> None:
    for flag, name, kind, text in _OPTIONS:
        default = _default(name)
        shown = f"{default:g}" if isinstance(default, float) else str(default)
        parser.add_argument(flag, dest=f"gw_{name}", type=kind, default=None, metavar="N", help=f"{text} (default {shown})")
    parser.add_argument("--metrics", dest="gw_metrics", choices=("auto", "open", "token"), default=None,
                        help="who may read /metrics: auto (open on a loopback address, else a token), open, token")
    parser.add_argument("--no-access-log", dest="gw_no_access_log", action="store_true", help="do not log one line per request")
    add_tls_options(parser)


def add_tls_options(parser: argparse.ArgumentParser) -> None:
    tls = parser.add_argument_group(
        "HTTPS", "a second listener for HTTPS; plain HTTP to a host with a certificate is redirected (308) "
        "there, except /.well-known/acme-challenge/"
    )
    tls.add_argument("--https-listen", dest="gw_https_listen", metavar="HOST:PORT", default=None,
                     help="address of the HTTPS listener, e.g. 0.0.0.0:443 (needs --tls-cert/--tls-key or --acme-email)")
    tls.add_argument("--tls-cert", dest="gw_tls_cert", metavar="FILE", default=None,
                     help="PEM certificate chain, e.g. a wildcard one for *.<domain>; reloaded when the file changes")
    tls.add_argument("--tls-key", dest="gw_tls_key", metavar="FILE", default=None, help="its PEM private key")
    tls.add_argument("--acme-email", dest="gw_acme_email", metavar="ADDR", default=None,
                     help="get certificates for gateway.<domain> and every <service>.<domain> over ACME (HTTP-01 on "
                     "--listen, which must be reachable on port 80), stored in <state>/tls, renewed at 2/3 of their life")
    tls.add_argument("--acme-directory", dest="gw_acme_directory", metavar="URL", default=None,
                     help=f"the ACME CA's directory (default Let's Encrypt: {_default('acme_directory')})")
    tls.add_argument("--acme-ca-bundle", dest="gw_acme_ca_bundle", metavar="FILE", default=None,
                     help="CA certificates to trust for the ACME directory itself (a private CA)")


_TLS = ("https_listen", "tls_cert", "tls_key", "acme_email", "acme_directory", "acme_ca_bundle")


def tls_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The HTTPS fields given on the command line, checked together (ValueError says what is missing)."""
    out = {name: getattr(args, f"gw_{name}") for name in _TLS if getattr(args, f"gw_{name}", None) is not None}
    for name in ("tls_cert", "tls_key", "acme_ca_bundle"):  # `up` and workers may not share our cwd
        if name in out:
            out[name] = os.path.abspath(out[name])
    if ("tls_cert" in out) != ("tls_key" in out):
        raise ValueError("--tls-cert and --tls-key go together")
    certified = "tls_cert" in out or "acme_email" in out
    if ("acme_directory" in out or "acme_ca_bundle" in out) and "acme_email" not in out:
        raise ValueError("--acme-directory/--acme-ca-bundle need --acme-email ADDR")
    if "https_listen" in out:
        parse_listen(out["https_listen"], "--https-listen")
        if not certified:
            raise ValueError("--https-listen needs certificates: --tls-cert FILE --tls-key FILE, or --acme-email ADDR")
    elif certified:
        raise ValueError("--tls-cert/--acme-email need --https-listen HOST:PORT (e.g. 0.0.0.0:443)")
    if "acme_email" in out and "@" not in out["acme_email"]:
        raise ValueError(f"--acme-email must be an e-mail address, got {out['acme_email']!r}")
    if "tls_cert" in out:  # a bad pair is an error now, not a handshake failure later
        from pathlib import Path

        from gateway.tls.certs import TlsError, load_pair

        try:
            load_pair(Path(out["tls_cert"]), Path(out["tls_key"]))
        except TlsError as e:
            raise ValueError(f"--tls-cert/--tls-key: {e}") from e
    if "acme_ca_bundle" in out and not os.path.isfile(out["acme_ca_bundle"]):
        raise ValueError(f"--acme-ca-bundle: no such file {out['acme_ca_bundle']}")
    return out


def gateway_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The `GatewaySettings` fields set on the command line (nothing when the options are absent)."""
    out: dict[str, Any] = {}
    for _flag, name, _kind, _text in _OPTIONS:
        value = getattr(args, f"gw_{name}", None)
        if value is not None:
            if value < 0:
                raise ValueError(f"{_flag} must not be negative")
            out[name] = value
    metrics = getattr(args, "gw_metrics", None)
    if metrics is not None:
        out["metrics"] = metrics
    if getattr(args, "gw_no_access_log", False):
        out["access_log"] = False
    out.update(tls_overrides(args))
    return out
