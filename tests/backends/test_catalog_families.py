"""The shipped catalog covers today's GPU instance families on both clouds, and `offers --gpu`
finds them with dstack's grammar (a bare name means one GPU)."""

from __future__ import annotations

import pytest

from backends.base import Requirements
from backends.cloud.catalog import SHIPPED_CATALOG, load_catalog, select_offers
from reconciler.config.resources import GpuSpec

FAMILIES = {
    "aws": ("p5.48xlarge", "p5.4xlarge", "p5e.48xlarge", "p5en.48xlarge", "p4d.24xlarge", "p4de.24xlarge",
            "g6e.xlarge", "g6.xlarge", "g5.xlarge", "g4dn.xlarge"),
    "azure": ("Standard_ND96isr_H100_v5", "Standard_ND96isr_H200_v5", "Standard_NC40ads_H100_v5",
              "Standard_NC24ads_A100_v4", "Standard_NV36ads_A10_v5", "Standard_ND96isr_MI300X_v5"),
}  # fmt: skip


def test_every_family_is_in_the_catalog_with_on_demand_and_spot_rows() -> None:
    offers = load_catalog(SHIPPED_CATALOG)
    for provider, names in FAMILIES.items():
        for name in names:
            rows = [o for o in offers if o.backend == provider and o.instance_type == name]
            assert {o.spot for o in rows} == {True, False}, (provider, name)
            assert all(o.gpu is not None and o.price > 0 for o in rows), name


@pytest.mark.parametrize(
    ("gpu", "providers", "instance"),
    [
        pytest.param("H100", {"aws", "azure"}, "p5.4xlarge", id="h100-single"),
        pytest.param("80GB", {"aws", "azure"}, "p5.4xlarge", id="80gb-has-aws"),
        pytest.param("H200:8", {"aws", "azure"}, "p5en.48xlarge", id="h200"),
        pytest.param("MI300X:8", {"azure"}, "Standard_ND96isr_MI300X_v5", id="mi300x"),
        pytest.param("A10:2", {"azure"}, "Standard_NV72ads_A10_v5", id="two-a10"),
    ],
)
def test_offers_by_gpu(gpu: str, providers: set[str], instance: str) -> None:
    requirements = Requirements(gpu=GpuSpec.model_validate(gpu).to_requirement(), spot_policy="on-demand")
    found = select_offers(load_catalog(SHIPPED_CATALOG), requirements)
    assert {o.backend for o in found} == providers
    assert instance in {o.instance_type for o in found}
    assert all(not o.spot for o in found)
