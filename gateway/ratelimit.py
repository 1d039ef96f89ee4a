"""Rate limits: dstack's per-service `rate_limits` and the settings file's per-token limits,
enforced with one token bucket per (limit, client key) shared by every gateway worker.

Why this shape. A limit must hold across `--workers N` processes, and it must cost a few
microseconds per request in Python. Each bucket is one number, its GCRA "theoretical arrival
time" (`tat`): a request is let through when `tat - now <= burst / rps` and then moves `tat` on by
`1 / rps` (the token bucket of rate `rps` holding `burst + 1` requests, which is nginx's
`limit_req ... burst=N nodelay`, what dstack configures). A bucket whose `tat` has passed is full
and carries no information, so its slot is free for any other key: the table never needs a sweep,
and when it is crowded the slot evicted is the one closest to full.

The buckets live in a fixed table of `BUCKETS x WAYS` slots `(tag, tat)` in an mmap. One worker:
an anonymous mapping, touched only by its event loop (no lock). Several workers: a file the parent
creates before starting them (`SharedTable.create`), mapped by each (`SharedTable.attach`), and a
POSIX named semaphore (posix_ipc) around the few loads and stores of one decision. A process
semaphore costs ~0.2 us uncontended (a futex, no system call); a `fcntl` lock costs two system
calls (~2 us) and the pure-Python lock-free alternatives (CAS through ctypes or the `atomics`
package) cost more than the whole budget. A worker killed inside the critical section (a few
microseconds long) would leave the semaphore taken: a wait longer than `STALE_LOCK` releases it.

Keys are hashed with BLAKE2b (stable across processes, unlike `hash()`); 64 bits pick the slot
group and the tag. `time.monotonic()` is CLOCK_MONOTONIC, one clock for every process.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import mmap
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gateway.asgi import Scope, header
from gateway.errors import GatewayError
from tidegate.routes import RateLimit, RateLimitKey

log = logging.getLogger("tidegate.gateway")

BUCKETS = 8192  # slot groups; 8192 x 8 ways x 16 bytes = 1 MiB, room for 65536 keys in debt at once
WAYS = 8
_SLOT = struct.Struct("<Qd")  # tag (0 = never used), tat (monotonic seconds)
_GROUP = WAYS * _SLOT.size
TABLE_BYTES = BUCKETS * _GROUP
STALE_LOCK = 0.25  # seconds: a holder this slow is dead (a decision takes microseconds)


class Lock(Protocol):
    def __enter__(self) -> object: ...
    def __exit__(self, *exc: object) -> None: ...


class _NoLock:
    def __enter__(self) -> object:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class _SemLock:
    """A POSIX named semaphore used as a mutex between the gateway's worker processes."""

    def __init__(self, sem: Any) -> None:
        self.sem = sem
        self._warned = False

    def __enter__(self) -> object:
        import posix_ipc

        try:
            self.sem.acquire(STALE_LOCK)
        except posix_ipc.BusyError:
            # The holder died mid-decision (SIGKILL): give the semaphore back and go on.
            if not self._warned:
                log.warning("rate limit table lock held for over %gs; taking it over", STALE_LOCK)
                self._warned = True
            self.sem.release()
            self.sem.acquire(STALE_LOCK)
        return self

    def __exit__(self, *exc: object) -> None:
        self.sem.release()


class SharedTable:
    """The bucket table: `take(key, now, interval, tolerance)` decides one request."""

    def __init__(self, buf: mmap.mmap, lock: Lock) -> None:
        self.buf = buf
        self.lock = lock
        self._unpack = _SLOT.unpack_from
        self._pack = _SLOT.pack_into

    @classmethod
    def private(cls) -> SharedTable:
        """One process: an anonymous mapping, no lock (every decision runs on one event loop)."""
        return cls(mmap.mmap(-1, TABLE_BYTES), _NoLock())

    @staticmethod
    def create(path: Path, sem_name: str) -> None:
        """In the parent, before the workers start: a zeroed table file and a fresh semaphore."""
        import posix_ipc

        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, TABLE_BYTES)
        finally:
            os.close(fd)
        with contextlib.suppress(posix_ipc.ExistentialError):
            posix_ipc.unlink_semaphore(sem_name)
        posix_ipc.Semaphore(sem_name, posix_ipc.O_CREX, mode=0o600, initial_value=1).close()

    @staticmethod
    def destroy(path: Path, sem_name: str) -> None:
        import posix_ipc

        path.unlink(missing_ok=True)
        with contextlib.suppress(posix_ipc.ExistentialError):
            posix_ipc.unlink_semaphore(sem_name)

    @classmethod
    def attach(cls, path: Path, sem_name: str) -> SharedTable:
        import posix_ipc

        fd = os.open(path, os.O_RDWR)
        try:
            buf = mmap.mmap(fd, TABLE_BYTES)
        finally:
            os.close(fd)
        return cls(buf, _SemLock(posix_ipc.Semaphore(sem_name)))

    def take(self, key: bytes, now: float, interval: float, tolerance: float) -> float:
        """Let one request of `key` through (0.0) or say how many seconds until one would pass."""
        h = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") | 1
        base = (h % BUCKETS) * _GROUP
        buf, unpack = self.buf, self._unpack
        with self.lock:
            free = -1
            oldest, oldest_tat = base, math.inf
            for off in range(base, base + _GROUP, _SLOT.size):
                tag, tat = unpack(buf, off)
                if tag == h:
                    break
                if tat <= now:
                    if free < 0:
                        free = off
                elif tat < oldest_tat:
                    oldest, oldest_tat = off, tat
            else:
                # A new key (or one whose bucket refilled and was reused): it starts full.
                off = free if free >= 0 else oldest
                tat = now
            tat = max(float(tat), now)
            if tat - now > tolerance:
                return tat - tolerance - now
            self._pack(buf, off, h, tat + interval)
            return 0.0


@dataclass(frozen=True)
class TokenLimits:
    """Per API token (by its name), from the settings file; `*` applies to tokens without their own."""

    by_name: dict[str, tuple[RateLimit, ...]]

    @classmethod
    def from_settings(cls, raw: dict[str, list[dict[str, Any]]]) -> TokenLimits:
        return cls(
            {
                name: tuple(sorted((RateLimit(**item) for item in items), key=lambda r: (-len(r.prefix), r.prefix)))
                for name, items in raw.items()
            }
        )

    def of(self, name: str) -> tuple[RateLimit, ...]:
        found = self.by_name.get(name)
        return found if found is not None else self.by_name.get("*", ())


def matching(limits: tuple[RateLimit, ...], path: str) -> RateLimit | None:
    """The limit with the longest prefix that `path` starts with (limits come longest first)."""
    for limit in limits:
        if path.startswith(limit.prefix):
            return limit
    return None


def client_key(scope: Scope, limit: RateLimit) -> str:
    """Who a request counts against: its client address, or the value of the limit's header
    (a request without that header counts against its address, so leaving it out gains nothing)."""
    if limit.key is RateLimitKey.HEADER and limit.header:
        value = header(scope, limit.header.lower().encode("latin-1"))
        if value:
            return "h:" + value.decode("latin-1")
    return "ip:" + str((scope.get("client") or ("",))[0])


def too_many(limit: RateLimit, wait: float, whose: str) -> GatewayError:
    seconds = max(1, math.ceil(wait))
    return GatewayError(
        429,
        f"rate limit exceeded for {whose} on {limit.prefix}: {limit.rps:g} requests/s with a burst of "
        f"{limit.burst}; retry in {seconds}s",
        "requests",
        "rate_limit_exceeded",
        retry_after=seconds,
    )


class Limiter:
    """The gateway's limits over one table (per worker object, table shared between workers)."""

    def __init__(self, table: SharedTable, tokens: TokenLimits | None = None) -> None:
        self.table = table
        self.tokens = tokens if tokens is not None and tokens.by_name else None
        self.clock = time.monotonic

    def check_service(self, service: str, limits: tuple[RateLimit, ...], scope: Scope, path: str) -> None:
        """Raise the 429 when `path` of `service` is over its matching `rate_limits` item."""
        limit = matching(limits, path)
        if limit is None:
            return
        who = client_key(scope, limit)
        key = f"s\0{service}\0{limit.prefix}\0{who}".encode("utf-8", "surrogateescape")
        wait = self.table.take(key, self.clock(), 1.0 / limit.rps, limit.burst / limit.rps)
        if wait:
            raise too_many(limit, wait, "this client" if who.startswith("ip:") else f"this {limit.header} value")

    def check_token(self, token_name: str, path: str) -> None:
        """Raise the 429 when the token named `token_name` is over its limit for `path`."""
        assert self.tokens is not None
        limit = matching(self.tokens.of(token_name), path)
        if limit is None:
            return
        key = f"t\0{token_name}\0{limit.prefix}".encode("utf-8", "surrogateescape")
        wait = self.table.take(key, self.clock(), 1.0 / limit.rps, limit.burst / limit.rps)
        if wait:
            raise too_many(limit, wait, "this API token")
