"""backends/cloud_common: offer cache and the capacity loop shared by the AWS and Azure backends."""

from __future__ import annotations

import pytest

from backends.base import Offer, PermanentError, ReplicaInfo, ReplicaStatus, Requirements, TemporaryError
from backends.cloud.common import CloudOffers, NoCapacity, launch_first_with_capacity


def offer(backend: str = "aws", region: str = "r1", itype: str = "m.large", spot: bool = False) -> Offer:
    return Offer(backend, region, itype, cpus=4, memory_gb=16, gpu=None, spot=spot, price=1.0)


def info(o: Offer) -> ReplicaInfo:
    return ReplicaInfo(replica_id=o.instance_type, backend=o.backend, status=ReplicaStatus.PROVISIONING)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_offers_are_cached_per_region_until_the_ttl_passes() -> None:
    calls: list[str] = []

    def refine(region: str, base: list[Offer]) -> list[Offer]:
        calls.append(region)
        return base[:1]

    clock = Clock()
    catalog = [offer(), offer(itype="m.xlarge"), offer(backend="azure")]
    src = CloudOffers("aws", catalog, ["r1"], live=True, ttl=60, clock=clock, refine=refine)
    assert src.for_region("r1") == [offer()]
    clock.now = 59
    assert src.for_region("r1") == [offer()]
    assert calls == ["r1"]
    clock.now = 60
    src.for_region("r1")
    assert calls == ["r1", "r1"]
    assert src.for_region("nowhere") == []  # nothing in the catalog: no API call
    assert calls == ["r1", "r1"]


def test_a_failing_refine_falls_back_to_the_catalog() -> None:
    def refine(region: str, base: list[Offer]) -> list[Offer]:
        raise ConnectionError("api down")

    src = CloudOffers("aws", [offer()], ["r1"], live=True, ttl=60, clock=Clock(), refine=refine)
    assert src.for_region("r1") == [offer()]


@pytest.mark.parametrize(
    ("requirements", "expected"),
    [
        pytest.param(Requirements(backends=("azure",)), [], id="other-backend"),
        pytest.param(Requirements(regions=("r2",)), [offer(region="r2")], id="region-filter"),
        pytest.param(Requirements(), [offer(), offer(region="r2")], id="all-regions"),
    ],
)
def test_offers_filter_by_backend_and_region(requirements: Requirements, expected: list[Offer]) -> None:
    src = CloudOffers(
        "aws", [offer(), offer(region="r2")], ["r1", "r2"], live=False, ttl=0, clock=Clock(), refine=lambda r, b: b
    )
    assert sorted(src.offers(requirements), key=lambda o: o.region) == expected
    assert src.match("r2", "m.large", False) == offer(region="r2")
    assert src.match("r2", "m.large", True) is None


@pytest.mark.parametrize(
    ("full", "max_attempts", "expected"),
    [
        pytest.param(set(), 3, "a", id="first-has-capacity"),
        pytest.param({"a"}, 3, "b", id="moves-to-next"),
        pytest.param({"a", "b"}, 2, "no capacity: a!; b!", id="bounded-attempts"),
        pytest.param({"a", "b", "c"}, 5, "no capacity: a!; b!; c!", id="all-full"),
    ],
)
def test_launch_first_with_capacity(full: set[str], max_attempts: int, expected: str) -> None:
    cleaned: list[str] = []

    def launch(o: Offer) -> ReplicaInfo:
        if o.instance_type in full:
            raise NoCapacity(o.instance_type)
        return info(o)

    def no_capacity(o: Offer, e: NoCapacity) -> str:
        cleaned.append(o.instance_type)
        return f"{e}!"

    candidates = [offer(itype=t) for t in "abc"]
    if expected.startswith("no capacity"):
        with pytest.raises(TemporaryError) as raised:
            launch_first_with_capacity("aws", candidates, max_attempts, launch, no_capacity)
        assert str(raised.value) == f"aws: {expected}"
    else:
        assert launch_first_with_capacity("aws", candidates, max_attempts, launch, no_capacity).replica_id == expected
    assert cleaned == sorted(full)[:max_attempts]


def test_no_candidates_is_permanent() -> None:
    src = CloudOffers("aws", [], ["r1"], live=False, ttl=0, clock=Clock(), refine=lambda r, b: b)

    class Spec:
        offer = None
        requirements = Requirements()

    with pytest.raises(PermanentError, match="aws: no offer matches"):
        src.candidates(Spec())  # type: ignore[arg-type]
