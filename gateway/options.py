"""The gateway's tuning options, shared by `tidegate gateway` and `tidegate up` (same names, same defaults).

`add_gateway_options` adds them to a parser; `gateway_overrides` turns parsed arguments into
`GatewaySettings` fields (only those given on the command line differ from the defaults).
"""

from __future__ import annotations

import argparse
from typing import Any

from gateway.settings import GatewaySettings

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
    return out
