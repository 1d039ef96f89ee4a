"""What the engine shows of replicas' output and backends' messages: masked with the secrets they received.

Why a module of its own: every text from outside (a replica's log lines, its exit message, a probe
error, a backend's create/delete error) may carry a secret value the replica got in its env. The
engine finds those values through the salted hashes its records carry (reconciler.state.redact);
this mixin is that lookup, kept out of the pass (reconciler.engine.reconcile).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from backends.base import BackendRegistry
from reconciler.engine.desired import DesiredService
from reconciler.state.records import ReplicaRecord, ServiceRecord, StateDoc
from reconciler.state.redact import SecretBook, withheld


class ReplicaMasking:
    """Mixed into the Engine, which sets these attributes."""

    secrets: SecretBook
    doc: StateDoc
    backends: BackendRegistry
    lock: Any  # the engine's RLock (reconciler.engine.reconcile)

    def _received(self, r: ReplicaRecord) -> Mapping[str, str]:
        """The secrets (name -> hash) replica `r` received: recorded at its creation, else (adopted
        after a crash) those of its spec, when a desired set of this process had that spec."""
        return r.secrets or self.secrets.for_spec(r.spec_hash) or {}

    def _fill_secrets(self, records: Iterable[ServiceRecord]) -> None:
        for rec in records:
            for r in rec.replicas:
                if not r.secrets:
                    known = self.secrets.for_spec(r.spec_hash)
                    if known:
                        r.secrets = dict(known)

    def mask_replica(self, r: ReplicaRecord, text: str) -> str:
        """Text from replica `r` (its exit message, a probe error) with its secrets masked."""
        return self.secrets.mask(self._received(r), text)

    def mask_replica_lines(self, r: ReplicaRecord, lines: Iterable[str]) -> list[str]:
        """Replica output: masked with the values of the secrets it received, or withheld when this
        process cannot re-derive one of them (reconciler.state.redact)."""
        lines = list(lines)
        masker = self.secrets.masker(self._received(r))
        if masker is None:
            return [withheld(self.secrets.unknown(self._received(r)))] if lines else []
        return masker.lines(lines)

    def replica_logs(self, backend: str, replica_id: str, lines: int) -> list[str]:
        """The last `lines` a replica wrote, masked as `ps` masks them. A replica this state no
        longer knows is masked with every secret value this process resolved."""
        got = list(self.backends.get(backend).logs(replica_id, lines))
        with self.lock:  # called from the control API's thread, beside the pass and the workers
            known = next((r for rec in self.doc.services.values() for r in rec.replicas if r.id == replica_id), None)
        if known is not None:
            return self.mask_replica_lines(known, got)
        return self.secrets.all_secrets().lines(got)

    def mask_service(self, name: str, text: str, desired: DesiredService | None = None) -> str:
        """Text from a backend about service `name` (a create/delete error) with the secrets of its
        desired spec and of every replica it has masked."""
        received: list[Mapping[str, str]] = [desired.secrets] if desired is not None else []
        rec = self.doc.services.get(name)
        received += [self._received(r) for r in rec.replicas] if rec is not None else []
        for one in received:
            text = self.secrets.mask(one, text)
        return text
