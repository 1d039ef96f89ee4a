"""`tidegate gateway` (serve the gateway on its own) and `tidegate token create|list|revoke`.

The state directory is `--state`, else `$TIDEGATE_STATE`, else `./state` - read inside the handler,
so importing this module reads nothing from the environment.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.access.tokens import TokenError, TokenScope, create_token, load_records, revoke_token
from gateway.etcd_cli import (
    SharedTokensError,
    add_etcd_options,
    etcd_location,
    local_state_dir,
    shared_tokens,
)
from gateway.options import add_gateway_options, gateway_overrides
from gateway.settings import DEFAULT_LISTEN, GatewaySettings, parse_listen
from tidegate.control_client import TOKEN_ENV, ControlClient, ControlClientError, server_from
from tidegate.etcd import EtcdClient, EtcdError, EtcdUnavailable
from tidegate.state_dir import choose_state_dir

if TYPE_CHECKING:
    from gateway.etcd_feed import RoutesRewrite


def state_dir(args: argparse.Namespace) -> Path:
    return choose_state_dir(getattr(args, "state", None), os.environ).resolve()


def _add_state(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state", metavar="DIR|etcd://…", help="state directory or etcd://host:2379,…/<prefix> (default: $TIDEGATE_STATE or ./state)"
    )
    add_etcd_options(parser)


@contextlib.contextmanager
def _token_folder(args: argparse.Namespace) -> Iterator[Path]:
    """The folder whose tokens.json the token commands read and write: the state dir, or (with
    etcd) a private copy written back to etcd in one guarded transaction."""
    try:
        location = etcd_location(args)
    except EtcdError as e:
        raise TokenError(str(e)) from e
    if location is None:
        yield state_dir(args)
        return
    try:
        with shared_tokens(location) as folder:
            yield folder
    except SharedTokensError as e:
        raise TokenError(str(e)) from e


def _add_server(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server", metavar="URL", help="a remote tidegate (default $TIDEGATE_SERVER); admin token from $TIDEGATE_TOKEN"
    )


def _remote(args: argparse.Namespace) -> ControlClient | None:
    server = server_from(getattr(args, "server", None), os.environ)
    return ControlClient(server, os.environ.get(TOKEN_ENV)) if server else None


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    gw = subparsers.add_parser("gateway", help="serve the gateway on its own (routes from <state>/routes.json)")
    _add_state(gw)
    gw.add_argument("--listen", default=DEFAULT_LISTEN, help=f"host:port (default {DEFAULT_LISTEN})")
    gw.add_argument("--domain", default="localhost", help="services answer at <name>.<domain> (default localhost)")
    gw.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    gw.add_argument("--settings", metavar="FILE", help="settings file (the gateway reads its `token_limits:`)")
    add_gateway_options(gw)
    gw.set_defaults(func=cmd_gateway)

    token = subparsers.add_parser("token", help="create, list or revoke API tokens")
    _add_state(token)
    tsub = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    create = tsub.add_parser("create", help="create a token and print it (only this once)")
    create.add_argument("name")
    create.add_argument("--admin", action="store_true", help="admin scope: the control API and dashboard too")
    _add_state(create)
    _add_server(create)
    create.set_defaults(func=cmd_token_create)
    listing = tsub.add_parser("list", help="list tokens (names and prefixes, never the tokens)")
    _add_state(listing)
    _add_server(listing)
    listing.set_defaults(func=cmd_token_list)
    revoke = tsub.add_parser("revoke", help="revoke a token by name")
    revoke.add_argument("name")
    _add_state(revoke)
    _add_server(revoke)
    revoke.set_defaults(func=cmd_token_revoke)


def cmd_gateway(args: argparse.Namespace, rewrite_routes: RoutesRewrite | None = None) -> int:
    """`rewrite_routes`: with etcd, what this machine serves of the routes read there (the
    reconciler's CLI passes one that opens this machine's own tunnels to cloud replicas)."""
    from gateway.server import serve

    try:
        host, port = parse_listen(args.listen)
        overrides = gateway_overrides(args)
        location = etcd_location(args)
        if args.settings:
            from gateway.ratelimit_settings import read_token_limits

            overrides["token_limits"] = read_token_limits(args.settings)
        if location is not None:
            with contextlib.suppress(EtcdUnavailable):  # it may come later: serve what is on disk
                EtcdClient(location).probe()
    except (ValueError, EtcdError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    settings = GatewaySettings(
        state_dir=local_state_dir(args) if location is not None else state_dir(args),
        host=host,
        port=port,
        domain=args.domain,
        workers=max(1, args.workers),
        webhook_secret=os.environ.get("TIDEGATE_WEBHOOK_SECRET") or None,
        **overrides,
    )
    print(f"tidegate gateway on http://{host}:{port} (services at http://<name>.{args.domain}:{port}, "
          f"OpenAI API at http://{host}:{port}/v1), state {location.describe() if location else settings.state_dir}", flush=True)
    if settings.https_address is not None:
        h, p = settings.https_address
        shown = "" if p == 443 else f":{p}"
        source = f"certificates from ACME ({settings.acme_directory})" if settings.acme_email else "certificate " + str(settings.tls_cert)
        print(f"HTTPS on {h}:{p}: https://<name>.{args.domain}{shown}, OpenAI API at https://gateway.{args.domain}{shown}; "
              f"{source}", flush=True)
    if location is None:
        serve(settings)
        return 0
    from gateway.etcd_feed import fed

    with fed(location, settings.state_dir, f"{socket.gethostname()}-gw{port}", rewrite_routes=rewrite_routes):
        serve(settings)
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    client = _remote(args)
    if client is not None:
        with client:
            try:
                created = client.call("POST", "/tokens", json={"name": args.name, "admin": bool(args.admin)})
            except ControlClientError as e:
                print(f"error: {e}", file=sys.stderr)
                return 1
        print(created["token"])
        print(f"{created['scope']} token {args.name!r} created on {client.http.base_url}; it is shown only now", file=sys.stderr)
        return 0
    try:
        scope = TokenScope.ADMIN if getattr(args, "admin", False) else TokenScope.INFERENCE
        with _token_folder(args) as folder:
            token = create_token(folder, args.name, scope=scope)
    except TokenError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(token)
    print(f"{scope} token {args.name!r} created; it is shown only now (the state directory keeps its hash)", file=sys.stderr)
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    client = _remote(args)
    if client is not None:
        with client:
            try:
                rows = client.call("GET", "/tokens")
            except ControlClientError as e:
                print(f"error: {e}", file=sys.stderr)
                return 1
        for t in rows:
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t["created_at"]))
            print(f"{t['name']}\t{t['prefix']}...\t{t['scope']}\t{created}")
        return 0
    try:
        with _token_folder(args) as folder:
            records = load_records(folder)
    except TokenError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not records:
        print("no tokens (create one with `tidegate token create NAME`)")
        return 0
    for r in records:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created_at))
        print(f"{r.name}\t{r.prefix}...\t{r.scope}\t{created}")
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    client = _remote(args)
    if client is not None:
        with client:
            try:
                client.call("DELETE", f"/tokens/{args.name}")
            except ControlClientError as e:
                print(f"error: {e}", file=sys.stderr)
                return 1
        print(f"token {args.name!r} revoked")
        return 0
    try:
        with _token_folder(args) as folder:
            revoke_token(folder, args.name)
    except TokenError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"token {args.name!r} revoked")
    return 0
