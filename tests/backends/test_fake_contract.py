"""The fake backend of the engine tests and the control-plane benchmark passes the same contract
as the real backends: instantly, and with cloud-like latencies where `create`/`delete` only start
the operation (the latencies are longer than the call budget, so a waiting fake would fail)."""

from __future__ import annotations

import time

import pytest
from contract import BackendContract, SpecFactory

from backends.base import ReplicaSpec, ReplicaStatus
from tests.reconciler.fakes import FakeBackend


def make_factory() -> SpecFactory:
    def make(ordinal: int = 0, service: str = "contract") -> ReplicaSpec:
        return ReplicaSpec(
            replica_id=f"{service}-0123abcd-{ordinal}", service=service, spec_hash="0123abcd" * 8, ordinal=ordinal, port=8000
        )

    return make


class TestFakeContract(BackendContract):
    eventually_timeout = 5.0

    @pytest.fixture
    def backend(self) -> FakeBackend:
        return FakeBackend()

    @pytest.fixture
    def make_spec(self) -> SpecFactory:
        return make_factory()


class TestLatentFakeContract(BackendContract):
    """A cloud: 0.6 s to boot, 0.4 s to tear down; create/delete must return well before."""

    eventually_timeout = 5.0
    call_budget = 0.2

    @pytest.fixture
    def backend(self) -> FakeBackend:
        return FakeBackend(create_latency=0.6, delete_latency=0.4, ready_latency=0.3)

    @pytest.fixture
    def make_spec(self) -> SpecFactory:
        return make_factory()


def test_a_blocking_fake_fails_the_call_budget_the_contract_sets() -> None:
    """The contract's budget check bites: a fake that waits on its operation holds the caller."""
    backend = FakeBackend(create_latency=0.3, blocking=True)
    started = time.monotonic()
    info = backend.create(make_factory()(service="slow"))
    assert time.monotonic() - started >= 0.3 > TestLatentFakeContract.call_budget
    assert info.status is ReplicaStatus.RUNNING


def test_latencies_are_observed_through_describe_and_the_prober() -> None:
    now = [100.0]
    backend = FakeBackend(create_latency=3.0, ready_latency=2.0, delete_latency=1.0, timer=lambda: now[0])
    spec = make_factory()(service="web")
    assert backend.create(spec).status is ReplicaStatus.PROVISIONING
    probe = backend.prober()
    assert not probe("http://fake/" + spec.replica_id, None, 1.0).ready
    now[0] += 3.0
    assert backend.describe(spec.replica_id).status is ReplicaStatus.RUNNING  # type: ignore[union-attr]
    assert not probe("http://fake/" + spec.replica_id, None, 1.0).ready
    now[0] += 2.0
    assert probe("http://fake/" + spec.replica_id, None, 1.0).ready
    backend.delete(spec.replica_id)
    assert backend.describe(spec.replica_id).status is ReplicaStatus.TERMINATING  # type: ignore[union-attr]
    now[0] += 1.0
    assert backend.describe(spec.replica_id) is None
    assert backend.list_owned() == []
