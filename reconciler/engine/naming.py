"""Deterministic, DNS-safe names for replicas: `<service>-<spec-hash8>-<ordinal>`.

Why: `Backend.create` is idempotent by replica id, so after a crash the reconciler must be able to
compute the very same id again from (service, spec hash, ordinal). The id doubles as a hostname
label and a cloud resource name, so it stays within 63 characters of [a-z0-9-].
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

MAX_LABEL = 63
HASH_LEN = 8
_UNSAFE = re.compile(r"[^a-z0-9-]+")
_ID_RE = re.compile(r"^(?P<service>[a-z0-9-]+)-(?P<hash>[0-9a-f]{8})-(?P<ordinal>\d+)$")


@dataclass(frozen=True)
class ReplicaName:
    service_part: str
    spec_hash8: str
    ordinal: int


def dns_safe(name: str) -> str:
    """Lower-case, runs of anything outside [a-z0-9-] become '-', no leading/trailing '-'."""
    safe = _UNSAFE.sub("-", name.lower()).strip("-")
    return safe or "svc"


@functools.lru_cache(maxsize=16_384)  # pure; a plan of 1,000 services asks the same ids each pass
def replica_id(service: str, spec_hash: str, ordinal: int) -> str:
    """The replica id; the service part is trimmed so the whole id fits in one DNS label."""
    if ordinal < 0:
        raise ValueError("ordinal must be >= 0")
    suffix = f"-{spec_hash[:HASH_LEN]}-{ordinal}"
    room = MAX_LABEL - len(suffix)
    service_part = dns_safe(service)[:room].rstrip("-") or "svc"
    return service_part + suffix


def parse_replica_id(rid: str) -> ReplicaName | None:
    """Split an id made by `replica_id`; None when it is not one of ours."""
    m = _ID_RE.match(rid)
    if m is None:
        return None
    return ReplicaName(m.group("service"), m.group("hash"), int(m.group("ordinal")))


def service_host(service: str, domain: str) -> str:
    return f"{dns_safe(service)}.{domain}"
