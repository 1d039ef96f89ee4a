"""etcd v3 JSON-gateway values: base64 keys and values, key ranges, and the compare/operation
bodies of a transaction (`/v3/kv/txn`). Pure functions; `tidegate.etcd` re-exports the ones
callers use.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def unb64(data: str | None) -> bytes:
    return base64.b64decode(data) if data else b""


def range_end(prefix: str) -> str:
    """The end of the key range that holds every key starting with `prefix`."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return b64(bytes(raw))


@dataclass(frozen=True)
class KV:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int = 0


def kv_of(raw: Mapping[str, Any]) -> KV:
    return KV(
        key=unb64(raw.get("key")).decode(),
        value=unb64(raw.get("value")),
        create_revision=int(raw.get("create_revision", 0)),
        mod_revision=int(raw.get("mod_revision", 0)),
        lease=int(raw.get("lease", 0)),
    )


# Builders of transaction parts (the JSON of etcd's TxnRequest).
def cmp_create_revision(key: str, revision: int) -> dict[str, Any]:
    return {"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": str(revision)}


def cmp_mod_revision(key: str, revision: int) -> dict[str, Any]:
    return {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)}


def op_put(key: str, value: bytes, lease: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = {"key": b64(key), "value": b64(value)}
    if lease:
        body["lease"] = str(lease)
    return {"request_put": body}


def op_delete(key: str, prefix: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"key": b64(key)}
    if prefix:
        body["range_end"] = range_end(key)
    return {"request_delete_range": body}


def op_delete_range(start: str, end: str) -> dict[str, Any]:
    return {"request_delete_range": {"key": b64(start), "range_end": b64(end)}}
