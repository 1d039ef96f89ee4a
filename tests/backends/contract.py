"""The backend contract: one test suite every `Backend` implementation must pass.

Why: the reconciler drives the local process backend and the cloud backends through the same
small protocol (backends/base.py) and relies on the same promises from each of them: `create` is
idempotent by replica id, `describe` answers None for what it does not have, `list_owned` shows
everything created, `delete` makes a replica go away and treats "already gone" as success, and
`offers` is a list sorted cheapest first. These tests state those promises once.

How to use it (from a test module in this directory, which pytest puts on `sys.path`)::

    from contract import BackendContract

    class TestAwsContract(BackendContract):
        eventually_timeout = 60.0          # clouds converge slowly; local needs ~seconds

        @pytest.fixture
        def backend(self, ...) -> Backend: ...

        @pytest.fixture
        def make_spec(self, ...) -> SpecFactory:
            def make(ordinal: int = 0, service: str = "svc") -> ReplicaSpec: ...
            return make

`make_spec` builds a trivial service for that backend (a tiny HTTP server locally, a small
instance type in the cloud). The suite passes a fresh service name per test so tests never see
each other's replicas, and deletes everything it created when a test ends (pass or fail).

Nothing here assumes a local process: state changes may be asynchronous, so checks that depend on
convergence poll with `eventually` under a bounded deadline (`eventually_timeout`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol, TypeVar

import pytest

from backends.base import (
    CALL_BUDGET,
    Backend,
    Offer,
    Range,
    ReplicaInfo,
    ReplicaSpec,
    ReplicaStatus,
    Requirements,
)

T = TypeVar("T")

STARTED = (ReplicaStatus.RUNNING, ReplicaStatus.PROVISIONING)
GONE_OR_GOING = (ReplicaStatus.GONE, ReplicaStatus.TERMINATING)


class SpecFactory(Protocol):
    def __call__(self, ordinal: int = 0, service: str = "contract") -> ReplicaSpec: ...


def eventually(
    check: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll `check` until it returns something truthy (returned) or fail after `timeout` seconds.

    The deadline is a bound for slow backends, not an assertion on speed: a fast backend passes on
    the first call without sleeping.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            pytest.fail(f"{what} did not hold within {timeout:g}s (last value: {result!r})")
        time.sleep(interval)


class Tracker:
    """Creates replicas through the backend and deletes every one of them at teardown."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.ids: list[str] = []

    def create(self, spec: ReplicaSpec) -> ReplicaInfo:
        if spec.replica_id not in self.ids:
            self.ids.append(spec.replica_id)
        return self.backend.create(spec)

    def cleanup(self) -> None:
        errors: list[BaseException] = []
        for replica_id in self.ids:
            try:
                self.backend.delete(replica_id)
            except Exception as e:  # keep deleting the others; report at the end
                errors.append(e)
        if errors:
            raise errors[0]


class BackendContract:
    """Base class of every backend's contract tests; subclasses provide the two fixtures."""

    # Bounded deadline for asynchronous backends (cloud APIs); a local backend converges at once.
    eventually_timeout: float = 15.0
    poll_interval: float = 0.05
    # Wall time `create` / `delete` may take (backends/base.py): they start an operation and
    # return; a backend whose test double simulates a long operation lowers it to prove so.
    call_budget: float = CALL_BUDGET

    # ---- fixtures a subclass must provide -------------------------------------------------
    @pytest.fixture
    def backend(self) -> Backend:
        pytest.fail(f"{type(self).__name__} must override the `backend` fixture")

    @pytest.fixture
    def make_spec(self) -> SpecFactory:
        pytest.fail(f"{type(self).__name__} must override the `make_spec` fixture")

    # ---- fixtures a subclass may override ----------------------------------------------------
    @pytest.fixture
    def satisfiable_requirements(self) -> Requirements:
        """Requirements this backend should be able to offer something for."""
        return Requirements(cpus=Range(1, None), memory_gb=Range(0.5, None), disk_gb=Range())

    # ---- helpers -------------------------------------------------------------------------------
    @pytest.fixture
    def tracker(self, backend: Backend) -> Iterator[Tracker]:
        t = Tracker(backend)
        try:
            yield t
        finally:
            t.cleanup()

    @pytest.fixture
    def service(self) -> str:
        """A service name no other test uses (lowercase letters and digits, starts with a letter)."""
        return "ct" + uuid.uuid4().hex[:8]

    def eventually(self, check: Callable[[], T | None], what: str = "condition") -> T:
        return eventually(check, timeout=self.eventually_timeout, interval=self.poll_interval, what=what)

    @staticmethod
    def owned(backend: Backend, replica_id: str) -> list[ReplicaInfo]:
        return [r for r in backend.list_owned() if r.replica_id == replica_id]

    # ---- create --------------------------------------------------------------------------------
    def test_create_returns_started_info(
        self, backend: Backend, make_spec: SpecFactory, tracker: Tracker, service: str
    ) -> None:
        spec = make_spec(ordinal=0, service=service)
        info = tracker.create(spec)
        assert info.replica_id == spec.replica_id
        assert info.status in STARTED
        assert info.backend == backend.name

    def test_create_twice_starts_only_one(
        self, backend: Backend, make_spec: SpecFactory, tracker: Tracker, service: str
    ) -> None:
        spec = make_spec(ordinal=0, service=service)
        first = tracker.create(spec)
        second = tracker.create(spec)
        assert second.replica_id == first.replica_id == spec.replica_id
        if first.handle is not None and second.handle is not None:
            assert second.handle == first.handle
        listed = self.eventually(lambda: self.owned(backend, spec.replica_id), what="replica listed")
        assert len(listed) == 1

    # ---- slow calls: started, then observed -----------------------------------------------------
    def test_create_returns_within_budget_and_describe_shows_it_finish(
        self, backend: Backend, make_spec: SpecFactory, tracker: Tracker, service: str
    ) -> None:
        spec = make_spec(ordinal=0, service=service)
        started = time.monotonic()
        info = tracker.create(spec)
        took = time.monotonic() - started
        assert took <= self.call_budget, f"create held its caller {took:.1f}s (budget {self.call_budget:g}s)"
        assert info.status in STARTED

        def finished() -> ReplicaInfo | None:
            now = backend.describe(spec.replica_id)
            done = (ReplicaStatus.RUNNING, ReplicaStatus.EXITED)
            return now if now is not None and now.status in done else None

        final = self.eventually(finished, what="the create operation finished (RUNNING or EXITED)")
        if info.handle is not None and final.handle is not None:
            assert final.handle == info.handle, "describe observes the operation create started"

    def test_delete_returns_within_budget(
        self, backend: Backend, make_spec: SpecFactory, tracker: Tracker, service: str
    ) -> None:
        spec = make_spec(ordinal=0, service=service)
        tracker.create(spec)
        started = time.monotonic()
        backend.delete(spec.replica_id)
        took = time.monotonic() - started
        assert took <= self.call_budget, f"delete held its caller {took:.1f}s (budget {self.call_budget:g}s)"
        info = backend.describe(spec.replica_id)
        assert info is None or info.status in GONE_OR_GOING

    # ---- describe ------------------------------------------------------------------------------
    def test_describe_returns_created_replica(
        self, backend: Backend, make_spec: SpecFactory, tracker: Tracker, service: str
    ) -> None:
        spec = make_spec(ordinal=0, service=service)
        tracker.create(spec)
        info = self.eventually(lambda: backend.describe(spec.replica_id), what="describe finds replica")
        assert info.replica_id == spec.replica_id
        assert info.backend == backend.name
        assert info.status not in GONE_OR_GOING

    def test_describe_unknown_is_none(self, backend: Backend, service: str) -> None:
        assert backend.describe(f"{service}-00000000-0") is None

    # ---- list_owned ----------------------------------------------------------------------------
    def test_list_owned_lists_created(
        self, backend: Backend, make_spec: SpecFactory, tracker: Tracker, service: str
    ) -> None:
        specs = [make_spec(ordinal=i, service=service) for i in (0, 1)]
        for spec in specs:
            tracker.create(spec)
        wanted = {s.replica_id for s in specs}

        def all_listed() -> set[str] | None:
            ids = {r.replica_id for r in backend.list_owned()}
            return ids if wanted <= ids else None

        self.eventually(all_listed, what="both replicas listed")
        for info in backend.list_owned():
            assert info.backend == backend.name
            if info.replica_id in wanted:
                assert info.service in (None, service)

    # ---- delete --------------------------------------------------------------------------------
    def test_delete_makes_it_gone(
        self, backend: Backend, make_spec: SpecFactory, tracker: Tracker, service: str
    ) -> None:
        spec = make_spec(ordinal=0, service=service)
        tracker.create(spec)
        backend.delete(spec.replica_id)

        def gone() -> bool:
            info = backend.describe(spec.replica_id)
            listed = [r for r in self.owned(backend, spec.replica_id) if r.status != ReplicaStatus.GONE]
            return (info is None or info.status == ReplicaStatus.GONE) and not listed

        self.eventually(gone, what="deleted replica gone")

    def test_delete_twice_succeeds(
        self, backend: Backend, make_spec: SpecFactory, tracker: Tracker, service: str
    ) -> None:
        spec = make_spec(ordinal=0, service=service)
        tracker.create(spec)
        backend.delete(spec.replica_id)
        backend.delete(spec.replica_id)

    def test_delete_unknown_succeeds(self, backend: Backend, service: str) -> None:
        backend.delete(f"{service}-00000000-7")

    # ---- offers --------------------------------------------------------------------------------
    def test_offers_is_a_list_cheapest_first(
        self, backend: Backend, satisfiable_requirements: Requirements
    ) -> None:
        offers: Sequence[Offer] = backend.offers(satisfiable_requirements)
        assert isinstance(offers, Sequence)
        assert all(isinstance(o, Offer) for o in offers)
        assert all(o.backend == backend.name for o in offers)
        prices = [o.price for o in offers]
        assert prices == sorted(prices)

    def test_offers_empty_when_nothing_fits(self, backend: Backend) -> None:
        assert list(backend.offers(Requirements(cpus=Range(100_000, None)))) == []

    # ---- the members that say what differs between backends -------------------------------------
    def test_answers_every_protocol_member(self, backend: Backend, make_spec: SpecFactory) -> None:
        """Every backend answers every member (nothing is probed with getattr): a flag for whether
        it ships the checkout, a screening answer, its log file or None, its litter, `close`."""
        assert isinstance(backend, Backend)
        assert isinstance(backend.ships_workdir, bool)
        reason = backend.can_run(make_spec())
        assert reason is None or (isinstance(reason, str) and reason)
        assert isinstance(backend.collect_garbage(), list)
        path = backend.log_path(make_spec().replica_id)
        assert path is None or path.name
        backend.close()

    # ---- logs ----------------------------------------------------------------------------------
    def test_logs_of_unknown_replica_is_empty(self, backend: Backend, service: str) -> None:
        assert list(backend.logs(f"{service}-00000000-0", lines=10)) == []
