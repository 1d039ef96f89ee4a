"""Mirroring an etcd prefix (a read, then its watch, again after any break), and the file in which
the gateway's feed says whether etcd is in reach.

Why a module of its own: the client (tidegate/etcd.py) is the reconciler's and the gateway's
transport; keeping a prefix mirrored is what only the gateway's feed (gateway/etcd_feed.py) does,
and /healthz (gateway/core.py) reads its word from a file because it may run in another worker.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tidegate.etcd import KV, EtcdClient, EtcdError
from tidegate.fsio import write_atomic

log = logging.getLogger("tidegate.etcd")


def run_watch(
    client: EtcdClient,
    prefix: str,
    on_snapshot: Callable[[list[KV]], None],
    on_event: Callable[[str, KV], None],
    on_health: Callable[[str | None], None],
    stop: threading.Event,
    retry: float = 0.5,
) -> None:
    """Keep `prefix` mirrored until `stop`: read everything (`on_snapshot`), then apply watch
    events (`on_event`); after any break, read everything again. `on_health(None)` while etcd
    answers, `on_health(reason)` while it does not. Runs in the caller's thread."""
    while not stop.is_set():
        try:
            kvs, revision = client.get_prefix(prefix)
        except EtcdError as e:
            on_health(str(e))
            stop.wait(retry)
            continue
        on_snapshot(kvs)
        on_health(None)
        started = time.monotonic()
        try:
            for kind, kv in client.watch_prefix(prefix, revision + 1, stop):
                on_event(kind, kv)
        except EtcdError as e:
            # A quiet stream ends at its read timeout, a dead member's at once: either way read
            # everything again right away; only a read that fails says etcd is out of reach.
            log.debug("watch %s ended: %s", prefix, e)
        if time.monotonic() - started < 1.0:
            stop.wait(retry)  # a stream that cannot even start is not retried in a busy loop


# The feed's word on etcd, in the local state dir: the gateway's /healthz reads it (it may run in
# other worker processes than the feed).
FEED_STATUS_FILE = "etcd-status.json"


def write_feed_status(local_dir: Path, error: str | None, since: float) -> None:
    body = json.dumps({"ok": error is None, "error": error, "since": since}).encode()
    write_atomic(local_dir / FEED_STATUS_FILE, body, mode=0o600)


def read_feed_status(local_dir: Path) -> str | None:
    """Why the shared state is out of reach (the gateway serves what it last had), or None."""
    try:
        data = json.loads((local_dir / FEED_STATUS_FILE).read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("ok", True):
        return None
    return str(data.get("error") or "etcd unreachable")
