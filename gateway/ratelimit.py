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
from typing import Any

from gateway.asgi import Scope
from gateway.errors import GatewayError
from tidegate.routes import RateLimit, RateLimitKey

log = logging.getLogger("tidegate.gateway")

BUCKETS = 8192  # slot groups; 8192 x 8 ways x 16 bytes = 1 MiB, room for 65536 keys in debt at once
WAYS = 8
_SLOT = struct.Struct("<Qd")  # tag (0 = never used), tat (monotonic seconds)
_GROUP = struct.Struct("<" + "Qd" * WAYS)
_GROUP_SIZE = _GROUP.size
TABLE_BYTES = BUCKETS * _GROUP_SIZE
HASH_CACHE = 65536  # keys whose hash a worker remembers (cleared when full)
LONG_KEY = 64  # header values longer than this are remembered by their digest, not kept whole
STALE_LOCK = 0.25  # seconds: a holder this slow is dead (a decision takes microseconds)


class _SemLock:
    """A POSIX named semaphore used as a mutex between the gateway's worker processes."""

    def __init__(self, sem: Any) -> None:
        import posix_ipc

        self.sem = sem
        self.busy = posix_ipc.BusyError
        self._warned = False

    def acquire(self) -> None:
        """The slow path, once `sem.acquire(0)` found it taken (SharedTable.take tries that first)."""
        try:
            self.sem.acquire(STALE_LOCK)
        except self.busy:
            # The holder died mid-decision (SIGKILL): give the semaphore back and go on.
            if not self._warned:
                log.warning("rate limit table lock held for over %gs; taking it over", STALE_LOCK)
                self._warned = True
            self.sem.release()
            self.sem.acquire(STALE_LOCK)



class SharedTable:
    """The bucket table: `take(h, now, interval, tolerance)` decides one request of the key
    whose 64-bit hash is `h` (`key_hash`)."""

    def __init__(self, buf: mmap.mmap, lock: _SemLock | None) -> None:
        self.buf = buf
        self.lock = lock

    @classmethod
    def private(cls) -> SharedTable:
        """One process: an anonymous mapping, no lock (every decision runs on one event loop)."""
        return cls(mmap.mmap(-1, TABLE_BYTES), None)

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

    def take(self, h: int, now: float, interval: float, tolerance: float) -> float:
        """Let one request through (0.0) or say how many seconds until one would pass."""
        base = (h % BUCKETS) * _GROUP_SIZE
        lock = self.lock
        if lock is not None:
            try:
                lock.sem.acquire(0)  # uncontended: a user-space atomic, no system call
            except lock.busy:
                lock.acquire()
        try:
            row = _GROUP.unpack_from(self.buf, base)  # the group's 8 (tag, tat) pairs in one call
            tags = row[::2]
            if h in tags:
                i = tags.index(h)
                tat = row[2 * i + 1]
            else:
                # A new key (or one whose bucket refilled and was reused): it starts full, in
                # the slot nearest to full (a free one, if any: its tat has passed).
                tats = row[1::2]
                i = tats.index(min(tats))
                tat = now
            if tat < now:
                tat = now
            if tat - now > tolerance:
                return float(tat - tolerance - now)
            _SLOT.pack_into(self.buf, base + i * _SLOT.size, h, tat + interval)
            return 0.0
        finally:
            if lock is not None:
                lock.sem.release()


def key_hash(key: bytes) -> int:
    """64 bits of BLAKE2b (the same in every process, unlike `hash()`); never 0 (an empty slot)."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") | 1


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


_Compiled = tuple[tuple[str, bytes | None, float, float, RateLimit], ...]


def compile_limits(limits: tuple[RateLimit, ...]) -> _Compiled:
    """(prefix, header name as it appears in ASGI scopes or None, interval, tolerance, limit)."""
    return tuple(
        (
            r.prefix,
            r.header.lower().encode("latin-1") if r.key is RateLimitKey.HEADER and r.header else None,
            1.0 / r.rps,
            r.burst / r.rps,
            r,
        )
        for r in limits
    )


class Limiter:
    """The gateway's limits over one table (per worker object, table shared between workers).

    The hot path works on plain tuples (`compile_limits`, once per routes table) and remembers
    the hash of each client key it saw: what remains per request is a prefix match, a dict
    lookup and the table's decision."""

    def __init__(self, table: SharedTable, tokens: TokenLimits | None = None) -> None:
        self.table = table
        self.tokens = tokens if tokens is not None and tokens.by_name else None
        self.clock = time.monotonic
        self._hashes: dict[tuple[Any, ...], int] = {}
        self._compiled: dict[int, tuple[tuple[RateLimit, ...], _Compiled]] = {}
        by_name = tokens.by_name if tokens is not None else {}
        self._by_token = {name: compile_limits(limits) for name, limits in by_name.items()}
        self._default = self._by_token.get("*", ())

    def _hash(self, key: tuple[Any, ...]) -> int:
        if len(self._hashes) >= HASH_CACHE:
            self._hashes.clear()
        h = self._hashes[key] = key_hash(repr(key).encode("utf-8", "surrogateescape"))
        return h

    def _compile(self, limits: tuple[RateLimit, ...]) -> _Compiled:
        if len(self._compiled) > 1024:  # tables of routes long replaced
            self._compiled.clear()
        compiled = compile_limits(limits)
        self._compiled[id(limits)] = (limits, compiled)
        return compiled

    def check_service(self, service: str, limits: tuple[RateLimit, ...], scope: Scope, path: str) -> None:
        """Raise the 429 when `path` of `service` is over its matching `rate_limits` item."""
        found = self._compiled.get(id(limits))
        compiled = found[1] if found is not None and found[0] is limits else self._compile(limits)
        for entry in compiled:  # longest prefix first
            if path.startswith(entry[0]):
                break
        else:
            return
        prefix, name, interval, tolerance, limit = entry
        value: Any = None
        if name is not None:  # a request without the header counts against its address
            for k, v in scope["headers"]:
                if k == name:
                    value = v
                    break
        if value is None:
            value = (scope.get("client") or ("",))[0]
        elif len(value) > LONG_KEY:  # the hash cache holds keys: bound what a client makes it keep
            value = hashlib.blake2b(value, digest_size=16).digest()
        key = (service, prefix, value)
        h = self._hashes.get(key)
        if h is None:
            h = self._hash(key)
        wait = self.table.take(h, self.clock(), interval, tolerance)
        if wait:
            raise too_many(limit, wait, "this client" if isinstance(value, str) else f"this {limit.header} value")

    def check_token(self, token_name: str, path: str) -> None:
        """Raise the 429 when the token named `token_name` is over its limit for `path`."""
        assert self.tokens is not None
        compiled = self._by_token.get(token_name, self._default)
        for entry in compiled:  # longest prefix first
            if path.startswith(entry[0]):
                break
        else:
            return
        key = ("token", token_name, entry[0])
        h = self._hashes.get(key)
        if h is None:
            h = self._hash(key)
        wait = self.table.take(h, self.clock(), entry[2], entry[3])
        if wait:
            raise too_many(entry[4], wait, "this API token")
