"""Webhook deliveries already accepted, so a replayed one is ignored: shared by every worker.

GitHub signs only the body, so an attacker who captured one delivery can resend it with any
`X-GitHub-Delivery`; a repeat is therefore recognised by its delivery id *or* by its body's
digest. Each seen key is an empty marker file under `<state>/gateway/deliveries/`, created with
O_EXCL (atomic across worker processes and kept over restarts). Markers older than `ttl` no longer
count and are deleted, and at most `max_entries` are kept (oldest first out), so the memory is
bounded in time and in size.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

TTL = 3 * 24 * 3600.0
MAX_ENTRIES = 10_000
PRUNE_EVERY = 100  # new markers between two prunes


class DeliveryLog:
    def __init__(self, directory: Path, ttl: float = TTL, max_entries: int = MAX_ENTRIES) -> None:
        self.directory = directory
        self.ttl = ttl
        self.max_entries = max_entries
        self._created = 0

    def first_time(self, delivery_id: str | None, body: bytes, now: float) -> bool:
        """Record this delivery; False when its id or its body was seen within `ttl`."""
        self.directory.mkdir(parents=True, exist_ok=True)
        keys = ["b-" + hashlib.sha256(body).hexdigest()]
        if delivery_id:
            keys.append("d-" + hashlib.sha256(delivery_id.encode("utf-8", "replace")).hexdigest())
        fresh = [self._mark(k, now) for k in keys]  # every key is marked, even after a repeat
        if self._created >= PRUNE_EVERY:
            self._created = 0
            self.prune(now)
        return all(fresh)

    def _mark(self, key: str, now: float) -> bool:
        path = self.directory / key
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            try:
                if now - path.stat().st_mtime <= self.ttl:
                    return False
                os.utime(path, (now, now))  # expired: counts as new from now on
            except FileNotFoundError:  # pruned meanwhile
                pass
            return True
        self._created += 1
        return True

    def prune(self, now: float) -> None:
        entries: list[tuple[float, Path]] = []
        with os.scandir(self.directory) as it:
            for e in it:
                try:
                    entries.append((e.stat().st_mtime, Path(e.path)))
                except FileNotFoundError:
                    continue
        entries.sort()
        surplus = max(0, len(entries) - self.max_entries)
        for i, (mtime, path) in enumerate(entries):
            if i < surplus or now - mtime > self.ttl:
                path.unlink(missing_ok=True)
