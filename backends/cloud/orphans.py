"""Orphan sweep: delete cloud replicas that carry our owner tag but that the state does not know.

Why this module exists: a crash between "instance created" and "state written", a lost state dir,
or a bug can leave instances running (and billing) that nothing tracks. `find_orphans` is the pure
decision — owned, unknown to the state, and first seen at least `grace` seconds ago (so a create
that is just being recorded is never raced) — and `OrphanSweeper` is the thin edge that lists,
remembers first sightings and deletes, logging each deletion. Only what a backend reports through
`list_owned` *and* what carries this installation's owner tag is ever touched.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backends.base import BackendError, ReplicaInfo, ReplicaStatus
from tidegate.fsio import write_json_atomic

if TYPE_CHECKING:
    from backends.cloud.backend import CloudBackend

log = logging.getLogger(__name__)

OWNER_TAG = "tidegate:owner"
_SETTLED = (ReplicaStatus.GONE, ReplicaStatus.TERMINATING)


def find_orphans(
    owned: Sequence[ReplicaInfo],
    known_ids: set[str],
    first_seen: Mapping[str, float],
    now: float,
    grace: float,
) -> list[ReplicaInfo]:
    """The owned replicas the state does not know, unseen-by-state for at least `grace` seconds."""
    out = []
    for info in owned:
        if info.replica_id in known_ids or info.status in _SETTLED:
            continue
        seen = first_seen.get(info.replica_id, now)
        if now - seen >= grace:
            out.append(info)
    return sorted(out, key=lambda i: (i.backend, i.replica_id))


def read_known_replica_ids(state_file: Path) -> set[str] | None:
    """Replica ids in state.json (services.*.replicas[*].id), or None when there is no readable file."""
    try:
        raw = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict):
        return None
    services = raw.get("services", {})
    values = (
        services.values() if isinstance(services, dict) else services if isinstance(services, list) else []
    )
    ids: set[str] = set()
    for service in values:
        replicas = service.get("replicas", []) if isinstance(service, dict) else []
        for replica in replicas if isinstance(replicas, list) else []:
            if isinstance(replica, dict) and isinstance(replica.get("id"), str):
                ids.add(replica["id"])
    return ids


@dataclass
class SweepReport:
    deleted: list[ReplicaInfo] = field(default_factory=list)
    waiting: list[ReplicaInfo] = field(default_factory=list)  # unknown, still inside the grace period
    errors: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)  # security groups removed (AWS)


class OrphanSweeper:
    """Lists owned replicas of each backend and deletes the orphans; first sightings are persisted
    to `seen_file` (if given) so a one-shot `tidegate gc` honours the grace period across runs."""

    def __init__(
        self,
        backends: Sequence[CloudBackend],
        owner: str,
        *,
        grace: float,
        seen_file: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.backends = backends
        self.owner = owner
        self.grace = grace
        self.seen_file = seen_file
        self.clock = clock
        self.first_seen: dict[str, float] = self._load_seen()

    def _load_seen(self) -> dict[str, float]:
        if self.seen_file is None:
            return {}
        try:
            raw: Any = json.loads(self.seen_file.read_text(encoding="utf-8"))
            return {str(k): float(v) for k, v in raw.get("first_seen", {}).items()}
        except (OSError, ValueError, AttributeError, TypeError):
            return {}

    def _save_seen(self) -> None:
        if self.seen_file is None:
            return
        write_json_atomic(self.seen_file, {"schema_version": 1, "first_seen": self.first_seen}, indent=2, sort_keys=True)

    def sweep(self, known_ids: set[str], *, dry_run: bool = False) -> SweepReport:
        report = SweepReport()
        now = self.clock()
        owned: list[tuple[CloudBackend, ReplicaInfo]] = []
        for backend in self.backends:
            try:
                for info in backend.list_owned():
                    if info.tags and info.tags.get(OWNER_TAG) != self.owner:
                        continue  # defence in depth: never act on another owner's resources
                    owned.append((backend, info))
            except BackendError as e:
                report.errors.append(f"{backend.name}: list failed: {e}")
        current = {info.replica_id for _, info in owned if info.replica_id not in known_ids}
        for rid in current:
            self.first_seen.setdefault(rid, now)
        self.first_seen = {k: v for k, v in self.first_seen.items() if k in current}
        orphans = {
            (i.backend, i.replica_id)
            for i in find_orphans([i for _, i in owned], known_ids, self.first_seen, now, self.grace)
        }
        for backend, info in owned:
            if info.replica_id in known_ids or info.status in _SETTLED:
                continue
            if (info.backend, info.replica_id) not in orphans:
                report.waiting.append(info)
                continue
            if dry_run:
                report.deleted.append(info)
                continue
            try:
                backend.delete(info.replica_id)
            except BackendError as e:
                report.errors.append(f"{backend.name}: delete {info.replica_id} failed: {e}")
                continue
            log.warning(
                "gc: deleted orphan %s on %s (handle %s, service %s): owned but unknown to the state",
                info.replica_id,
                backend.name,
                info.handle,
                info.service,
            )
            report.deleted.append(info)
            self.first_seen.pop(info.replica_id, None)
        if not dry_run:
            for backend in self.backends:
                try:
                    report.groups.extend(backend.sweep_security_groups())
                except BackendError as e:
                    report.errors.append(f"{backend.name}: security group sweep failed: {e}")
            self._save_seen()
        return report
