"""Which hosts need a certificate from ACME now, and when to look again (pure: values in, values out).

A host is due when it has no certificate, or when less than `renew_fraction` of its certificate's
lifetime is left (1/3: a 90-day certificate is renewed 30 days before it expires, as certbot does).
A host whose last attempt failed waits `retry * 2**(failures-1)` (at most a day) before the next:
a CA counts failed validations per host and account, and a host that cannot validate (no DNS
record yet) must not spend them all in a minute.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway.tls.files import CertInfo, name_matches

MAX_BACKOFF = 24 * 3600.0


@dataclass(frozen=True)
class Failure:
    count: int
    at: datetime


def backoff(failure: Failure, retry: float) -> timedelta:
    return timedelta(seconds=min(MAX_BACKOFF, retry * 2 ** (failure.count - 1)))


def renew_at(info: CertInfo, renew_fraction: float) -> datetime:
    return info.not_after - timedelta(seconds=info.lifetime() * renew_fraction)


@dataclass(frozen=True)
class Decision:
    due: tuple[str, ...]  # hosts to issue for now, in order
    wake: datetime | None  # when something next becomes due (None: nothing scheduled)


def decide(
    hosts: Iterable[str],
    certs: Mapping[str, CertInfo],
    failures: Mapping[str, Failure],
    now: datetime,
    *,
    renew_fraction: float,
    retry: float,
    covered: tuple[str, ...] = (),
) -> Decision:
    """`covered`: names of a `--tls-cert` certificate; hosts it covers need nothing from ACME."""
    due: list[str] = []
    wake: datetime | None = None
    for host in sorted(set(hosts)):
        if any(name_matches(p, host) for p in covered):
            continue
        info = certs.get(host)
        at = renew_at(info, renew_fraction) if info is not None and host in info.names else now
        failure = failures.get(host)
        if failure is not None:
            at = max(at, failure.at + backoff(failure, retry))
        if at <= now:
            due.append(host)
        elif wake is None or at < wake:
            wake = at
    return Decision(tuple(due), wake)
