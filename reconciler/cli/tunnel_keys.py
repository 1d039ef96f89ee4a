"""With `--state etcd://…`: every machine that may lead must hold the installation's SSH tunnel keys.

Why: a cloud replica trusts exactly one client key (in its user data) and presents a host key
derived from the installation's host-key secret. Both live in each machine's own state
(`<local-state>/ssh/`, or `--tunnel-keys DIR`) and never go to etcd: they are secrets. A leader on
another machine with other keys could reach none of the instances the previous leader launched,
and a retried launch would not be byte-identical. So the operator copies the folder to every
machine (like cloud credentials), and the first leader records the material's *fingerprints*
(hashes, never the keys) under the prefix at `tunnel-keys.json`. An `up` whose keys do not match
refuses to start its cloud backends, with one message naming the folder and how to copy it.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from backends.cloud.tunnels import KeyFingerprint, KeyStore
from tidegate.etcd import EtcdClient, EtcdLocation, cmp_create_revision, op_put

TUNNEL_KEYS_KEY = "tunnel-keys.json"


class TunnelKeysError(Exception):
    """This machine's tunnel keys are missing or not the installation's (the message says what to do)."""


def keys_dir(state_dir: Path, explicit: Path | None) -> Path:
    return explicit if explicit is not None else state_dir / "ssh"


def recorded(client: EtcdClient, location: EtcdLocation) -> dict[str, str] | None:
    """The fingerprints the first leader recorded, or None. Raises EtcdError."""
    kv = client.get(location.key(TUNNEL_KEYS_KEY))
    if kv is None:
        return None
    try:
        data = json.loads(kv.value)
    except ValueError:
        return None
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else None


def _copy_hint(folder: Path, record: dict[str, str], command: str) -> str:
    host = record.get("host") or "<a machine that has led>"
    return (
        f"copy the installation's key folder from a machine that has it, e.g. "
        f"`scp -p {host}:<its --local-state>/ssh/{{id_ed25519,host_key_secret}} {folder}/` "
        f"(files 0600, folder 0700; or point --tunnel-keys at such a copy), then run `{command}` again"
    )


def compare(
    store: KeyStore, record: dict[str, str], location: EtcdLocation, command: str, *, client_only: bool = False
) -> None:
    """Raise TunnelKeysError unless `store` holds the recorded material (`client_only`: a gateway,
    which needs the client key alone)."""
    folder = store.directory
    try:
        mine = store.fingerprint()
    except ValueError as e:
        raise TunnelKeysError(f"the tunnel keys in {folder} cannot be read ({e}); " + _copy_hint(folder, record, command)) from e
    where = f"etcd {location.describe()}"
    if mine is None:
        raise TunnelKeysError(
            f"this machine has no tunnel keys in {folder}, but {where} records the installation's "
            f"(client key {record.get('client')}, recorded by {record.get('host', '?')}): it could not "
            f"reach the cloud instances already running; " + _copy_hint(folder, record, command)
        )
    wrong = [
        name
        for name, ours in (("client key", mine.client), ("host-key secret", mine.host_key_secret))
        if not (client_only and name == "host-key secret")
        and ours != record.get("client" if name == "client key" else "host_key_secret")
    ]
    if wrong:
        raise TunnelKeysError(
            f"the tunnel keys in {folder} are not the installation's: their {' and '.join(wrong)} "
            f"differ from what {where} records (client key {record.get('client')} here {mine.client}, "
            f"recorded by {record.get('host', '?')}); with other keys the cloud instances already "
            f"running cannot be reached, so the cloud backends are not started; " + _copy_hint(folder, record, command)
        )


def check(
    client: EtcdClient, location: EtcdLocation, folder: Path, *, lead: bool, command: str = "tidegate up"
) -> str:
    """Check this machine's tunnel keys against the recorded fingerprints; when leading and nothing
    is recorded yet, create the keys (if missing) and record theirs. A line saying what happened;
    TunnelKeysError when they do not match. Raises EtcdError."""
    store = KeyStore(folder)
    record = recorded(client, location)
    if record is None and not lead:
        return f"tunnel keys: none recorded on etcd yet (the first leader records those in {folder})"
    if record is None:
        store.ensure()
        mine = store.fingerprint()
        assert mine is not None
        key = location.key(TUNNEL_KEYS_KEY)
        client.txn([cmp_create_revision(key, 0)], [op_put(key, _record_body(mine))])
        record = recorded(client, location)  # ours, or another first leader's that won the race
        assert record is not None
    compare(store, record, location, command)
    return f"tunnel keys: {folder} holds the installation's (client key {record.get('client')})"


def _record_body(mine: KeyFingerprint) -> bytes:
    return json.dumps(
        {"client": mine.client, "host_key_secret": mine.host_key_secret, "host": socket.gethostname(),
         "recorded_at": time.time()}
    ).encode()  # fmt: skip
