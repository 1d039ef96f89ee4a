"""The etcd implementation of the state store: documents as keys under `<prefix>/`, writes fenced.

Why fenced: several `tidegate up` share one prefix and exactly one of them (the elected leader,
reconciler.state.leader) may change what runs. A leader that was paused (SIGSTOP, a long GC, a
frozen VM) past its lease may wake up believing it still leads while another already does. So a
store built with a `Fence` makes every write one transaction conditioned on the leadership key's
create revision being the one this leader created: after the lease expired (the key is deleted)
or another leader took over (a new create revision), the transaction fails, nothing is written,
and the write raises `FencedOut` (a StateError: the engine holds the pass, the caller steps down).
A store without a fence (the CLI's `token` commands, gateways) writes plainly.

etcd being unreachable (down, partitioned, without quorum) is `StateUnwritableError` for writes and
`StateError` for reads: the engine's guard holds every action until it can record them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reconciler.state.docstore import check_name
from reconciler.state.errors import StateError, StateUnwritableError
from tidegate.etcd import (
    LEADER_KEY,
    EtcdClient,
    EtcdError,
    EtcdLocation,
    EtcdUnavailable,
    cmp_create_revision,
    op_delete,
    op_put,
)

Ops = list[dict[str, Any]]  # transaction operations (named here: `list` is a method below)


class FencedOut(StateUnwritableError):
    """This process no longer leads: its write was refused by the fence."""


@dataclass(frozen=True)
class Fence:
    """The leadership this process holds: the leader key's create revision (and its lease)."""

    revision: int
    lease: int


class EtcdStore:
    def __init__(self, client: EtcdClient, fence: Fence | None = None) -> None:
        self.client = client
        self.location: EtcdLocation = client.location
        self.fence = fence

    def describe(self) -> str:
        return self.location.describe()

    def key(self, name: str) -> str:
        return self.location.key(check_name(name))

    def fenced(self, fence: Fence | None) -> EtcdStore:
        return EtcdStore(self.client, fence)

    def _read_error(self, e: EtcdError) -> StateError:
        return StateError(f"cannot read the state on {self.describe()}: {e}")

    def get(self, name: str) -> bytes | None:
        try:
            kv = self.client.get(self.key(name))
        except EtcdError as e:
            raise self._read_error(e) from e
        return None if kv is None else kv.value

    def list(self, prefix: str) -> dict[str, bytes]:
        base = self.location.key("")
        try:
            kvs, _ = self.client.get_prefix(base + prefix)
        except EtcdError as e:
            raise self._read_error(e) from e
        return {kv.key[len(base) :]: kv.value for kv in kvs}

    def _write(self, ops: Ops, what: str) -> None:
        compare = (
            []
            if self.fence is None
            else [cmp_create_revision(self.location.key(LEADER_KEY), self.fence.revision)]
        )
        try:
            ok, _ = self.client.txn(compare, ops)
        except EtcdUnavailable as e:
            raise StateUnwritableError(f"cannot write {what} to {self.describe()}: {e}") from e
        except EtcdError as e:
            raise StateUnwritableError(f"etcd refused {what}: {e}") from e
        if not ok:
            raise FencedOut(f"not written ({what}): this reconciler no longer leads {self.describe()}")

    def put(self, name: str, body: bytes) -> None:
        self._write([op_put(self.key(name), body)], name)

    def put_many(self, docs: dict[str, bytes | None]) -> None:
        """Several puts (None: delete) in one fenced transaction (etcd allows 128 operations)."""
        ops = [op_put(self.key(n), b) if b is not None else op_delete(self.key(n)) for n, b in docs.items()]
        for start in range(0, len(ops), 120):
            self._write(ops[start : start + 120], ", ".join(list(docs)[:3]))

    def create(self, name: str, body: bytes) -> bool:
        key = self.key(name)
        compare = [cmp_create_revision(key, 0)]
        if self.fence is not None:
            compare.append(cmp_create_revision(self.location.key(LEADER_KEY), self.fence.revision))
        try:
            ok, _ = self.client.txn(compare, [op_put(key, body)])
        except EtcdError as e:
            raise StateUnwritableError(f"cannot write {name} to {self.describe()}: {e}") from e
        return ok

    def delete(self, name: str) -> None:
        self._write([op_delete(self.key(name))], f"delete {name}")

    def verify_fence(self) -> None:
        """Raise FencedOut unless this store's fence still holds (a read, nothing written)."""
        if self.fence is None:
            return
        try:
            kv = self.client.get(self.location.key(LEADER_KEY))
        except EtcdError as e:
            raise StateUnwritableError(f"cannot reach {self.describe()}: {e}") from e
        if kv is None or kv.create_revision != self.fence.revision:
            raise FencedOut(f"this reconciler no longer leads {self.describe()}")
