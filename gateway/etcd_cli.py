"""The command line of shared state on etcd: `--state etcd://…`, the TLS options, the local directory,
and `tidegate token` against etcd.

Why a module: `tidegate gateway`, `tidegate token` and `tidegate up` read the same options the same
way (the reconciler's CLI imports this; the gateway may not import the reconciler). Credentials
never travel on the command line: the user and password come from $TIDEGATE_ETCD_USER and
$TIDEGATE_ETCD_PASSWORD (etcd's own auth); TLS is `etcds://` or any of --etcd-cacert/--etcd-cert/
--etcd-key (a client certificate and its key, e.g. for etcd's --client-cert-auth).

With etcd the state has two homes: what is shared lives under the prefix; what belongs to this
machine (replica working dirs, venvs, local replica logs, the repos cache, the gateway's own
copies of routes.json and tokens.json) lives in `--local-state DIR` (default
$TIDEGATE_LOCAL_STATE, else ./state-local). The installation's SSH tunnel keys for cloud replicas
are secrets and never go to etcd: every machine holds the same copy, in `<local-state>/ssh/` or in
`--tunnel-keys DIR` (README: "Cloud replicas and the tunnel keys").
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from gateway.access.tokens import TOKENS_FILE
from tidegate.etcd import (
    EtcdClient,
    EtcdError,
    EtcdLocation,
    cmp_create_revision,
    cmp_mod_revision,
    is_etcd_url,
    op_put,
)
from tidegate.state_dir import STATE_ENV

LOCAL_STATE_ENV = "TIDEGATE_LOCAL_STATE"
TUNNEL_KEYS_ENV = "TIDEGATE_TUNNEL_KEYS"
DEFAULT_LOCAL_STATE = "state-local"


class SharedTokensError(Exception):
    """tokens.json on etcd could not be read or was changed by someone else meanwhile."""


def add_etcd_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("shared state on etcd (--state etcd://host1:2379,host2:2379/<prefix>)")
    group.add_argument(
        "--local-state",
        metavar="DIR",
        help=f"this machine's own files with etcd (default ${LOCAL_STATE_ENV} or ./{DEFAULT_LOCAL_STATE})",
    )
    group.add_argument(
        "--tunnel-keys",
        metavar="DIR",
        help=f"the installation's SSH tunnel keys for cloud replicas (id_ed25519, host_key_secret), the "
        f"same on every machine (default ${TUNNEL_KEYS_ENV} or <local-state>/ssh)",
    )
    group.add_argument(
        "--etcd-cacert", metavar="FILE", help="CA bundle that signed etcd's server certificates"
    )
    group.add_argument("--etcd-cert", metavar="FILE", help="client certificate for etcd (with --etcd-key)")
    group.add_argument("--etcd-key", metavar="FILE", help="the client certificate's private key")


def state_value(args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    return getattr(args, "state", None) or environ.get(STATE_ENV) or None


def etcd_location(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> EtcdLocation | None:
    """The etcd location when `--state` (or $TIDEGATE_STATE) is one, else None. Raises EtcdError."""
    env = os.environ if environ is None else environ
    value = state_value(args, env)
    if not is_etcd_url(value):
        return None
    assert value is not None
    return EtcdLocation.parse(
        value,
        cacert=getattr(args, "etcd_cacert", None),
        cert=getattr(args, "etcd_cert", None),
        key=getattr(args, "etcd_key", None),
        environ=env,
    )


def local_state_dir(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(
        getattr(args, "local_state", None) or env.get(LOCAL_STATE_ENV) or DEFAULT_LOCAL_STATE
    ).resolve()


def tunnel_keys_dir(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Path | None:
    """`--tunnel-keys DIR` (or $TIDEGATE_TUNNEL_KEYS); None: the default `<state>/ssh`."""
    env = os.environ if environ is None else environ
    value = getattr(args, "tunnel_keys", None) or env.get(TUNNEL_KEYS_ENV)
    return Path(value).expanduser().resolve() if value else None


@contextlib.contextmanager
def shared_tokens(location: EtcdLocation) -> Iterator[Path]:
    """A private folder holding etcd's tokens.json; what the block leaves there is written back in
    one transaction that holds only if nobody changed the key meanwhile (else SharedTokensError:
    nothing written). The gateways' watches carry the change everywhere within a second."""
    client = EtcdClient(location)
    key = location.key(TOKENS_FILE)
    try:
        kv = client.get(key)
    except EtcdError as e:
        raise SharedTokensError(f"cannot read the tokens on {location.describe()}: {e}") from e
    with tempfile.TemporaryDirectory(prefix="tidegate-tokens-") as tmp:
        folder = Path(tmp)
        os.chmod(folder, 0o700)
        path = folder / TOKENS_FILE
        if kv is not None:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(kv.value)
        yield folder
        if not path.exists():
            return
        body = path.read_bytes()
        if kv is not None and body == kv.value:
            return
        guard = cmp_mod_revision(key, kv.mod_revision) if kv is not None else cmp_create_revision(key, 0)
        try:
            ok, _ = client.txn([guard], [op_put(key, body)])
        except EtcdError as e:
            raise SharedTokensError(f"cannot write the tokens to {location.describe()}: {e}") from e
        if not ok:
            raise SharedTokensError(
                "the tokens on etcd changed meanwhile; nothing written, run the command again"
            )
