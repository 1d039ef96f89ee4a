"""How one request reaches one etcd member: its timeouts, and which member is asked first.

Why: a member that is gone refuses a connection at once, but one that is paused, overloaded or
waiting for a raft election holds a request until its timeout. Asking it first on every request
would spend that timeout again and again (the leader's keepalive deadline is a few seconds), so
the client remembers when each member last failed (`Endpoints`): members that answered since,
or never failed, come first (the last that answered before the others), then the rest, the one
that failed longest ago first. Every member is still asked in its turn: when all have failed,
the oldest failure is the likeliest to have recovered. And each request carries its own bound
(`send`): the connect part short (members are on loopback or a LAN), the whole no longer than
its caller can wait — etcd3gw's `post` only knows the one timeout its client was made with.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

# Opening a connection to a member on loopback or a LAN takes milliseconds; longer means the
# member's host is gone or drowning, and another member should be asked.
CONNECT_TIMEOUT = 0.5
# A failure this old says little about the member now: it is ordered as if it never failed.
FORGET_AFTER = 30.0
# A member holding a request longer than this (etcd answers on loopback/LAN in milliseconds) is
# treated as failing while it holds it: paused, drowning, or a follower forwarding to a dead leader.
STALL = 0.25


class Endpoints:
    """The order to ask `n` members in, from what each did last (times from one monotonic clock).

    First the members with nothing against them (the one that answered last first, then in turn);
    then those that failed lately but fast (refused, an error answer: cheap to ask again), then
    those that failed lately by holding a request past STALL (each costs a timeout), the oldest
    failure first in both; last those holding a request past STALL now, held the shortest first."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.current = 0  # the member that answered last
        self._failed = [0.0] * n  # when each last failed (0: answered since, or never failed)
        self._slow = [False] * n  # whether that failure held the request past STALL
        self._pending: list[list[float]] = [[] for _ in range(n)]  # start times of requests out
        self._lock = threading.Lock()

    def order(self, now: float, skip: frozenset[int] = frozenset()) -> list[int]:
        with self._lock:
            start = self.current
            failed, slow = list(self._failed), list(self._slow)
            held = [min(p) if p else None for p in self._pending]

        def rank(i: int) -> tuple[int, float, int]:
            turn = (i - start) % self.n
            since = held[i]
            if since is not None and now - since > STALL:
                return 3, -since, turn
            if failed[i] and now - failed[i] < FORGET_AFTER:
                return 2 if slow[i] else 1, failed[i], turn
            return 0, 0.0, turn

        return sorted((i for i in range(self.n) if i not in skip), key=rank)

    def asking(self, i: int, now: float) -> float:
        """A request to member `i` goes out now; pass the result to `answered`/`failed`."""
        with self._lock:
            self._pending[i].append(now)
        return now

    def answered(self, i: int, asked: float) -> None:
        with self._lock:
            self._done(i, asked)
            self.current = i
            self._failed[i] = 0.0

    def failed(self, i: int, asked: float, now: float) -> None:
        with self._lock:
            self._done(i, asked)
            self._failed[i] = now
            self._slow[i] = now - asked > STALL

    def finished(self, i: int, asked: float) -> None:
        """The request ended with an answer that says nothing about the member's health."""
        with self._lock:
            self._done(i, asked)

    def _done(self, i: int, asked: float) -> None:
        if asked in self._pending[i]:
            self._pending[i].remove(asked)


def send(client: Any, path: str, body: Mapping[str, Any], timeout: float, options: Mapping[str, Any]) -> Any:
    """POST `body` to `path` on one etcd3gw client within `timeout` s (connect: at most
    CONNECT_TIMEOUT); the answer's JSON, or the exception etcd3gw's own `post` raises."""
    import requests
    from etcd3gw import exceptions as ex

    bound = (min(CONNECT_TIMEOUT, timeout), timeout)
    try:
        resp = client.session.post(client.get_url(path), json=dict(body), timeout=bound, **options)
    except requests.exceptions.Timeout as e:
        raise ex.ConnectionTimeoutError(str(e)) from e
    except requests.exceptions.ConnectionError as e:
        raise ex.ConnectionFailedError(str(e)) from e
    by_status: dict[int, type[ex.Etcd3Exception]] = {
        500: ex.InternalServerError,
        503: ex.ConnectionFailedError,
        408: ex.ConnectionTimeoutError,
        504: ex.ConnectionTimeoutError,
        412: ex.PreconditionFailedError,
    }
    if resp.status_code in by_status:
        raise by_status[resp.status_code](resp.text, resp.reason)
    if resp.status_code != 200:
        raise ex.Etcd3Exception(resp.text, resp.reason)
    return resp.json()
