"""dstack's resource grammar: GPU specs, size and count ranges, defaults, errors."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from backends.base import Range
from reconciler.config import GpuSpec, IntRange, MemoryRange, ResourcesSpec
from reconciler.config.resources import parse_memory


@pytest.mark.parametrize(
    ("spec", "names", "memory", "count", "vendor"),
    [
        pytest.param("80GB", None, (80, 80), (1, 1), None, id="memory-only"),
        pytest.param("A100", ["A100"], None, (1, 1), None, id="name-only-means-one"),
        pytest.param("A100:2", ["A100"], None, (2, 2), None, id="name-count"),
        pytest.param("A100,H100:2", ["A100", "H100"], None, (2, 2), None, id="any-of-names"),
        pytest.param("24GB..80GB", None, (24, 80), (1, 1), None, id="memory-range"),
        pytest.param("24GB..", None, (24, None), (1, 1), None, id="memory-open-range"),
        pytest.param("nvidia:80GB:4", None, (80, 80), (4, 4), "nvidia", id="vendor-memory-count"),
        pytest.param("1..8", None, None, (1, 8), None, id="count-range"),
        pytest.param("A100:40GB:2", ["A100"], (40, 40), (2, 2), None, id="name-memory-count"),
        pytest.param("2:A10G", ["A10G"], None, (2, 2), None, id="any-order"),
        pytest.param("tpu:v5e", ["v5e"], None, (1, 1), "google", id="tpu-vendor"),
        pytest.param(" H100 : 2 ", ["H100"], None, (2, 2), None, id="spaces"),
        pytest.param(4, None, None, (4, 4), None, id="int-count"),
        pytest.param(
            {"name": "A100", "count": "1..2", "memory": "40GB.."},
            ["A100"],
            (40, None),
            (1, 2),
            None,
            id="mapping",
        ),
        pytest.param({"name": ["L4", "T4"]}, ["L4", "T4"], None, (1, 1), None, id="mapping-name-list"),
        pytest.param("512MB", None, (0.5, 0.5), (1, 1), None, id="megabytes"),
    ],
)
def test_gpu_grammar(
    spec: Any,
    names: list[str] | None,
    memory: tuple[float | None, float | None] | None,
    count: tuple[int, int | None],
    vendor: str | None,
) -> None:
    gpu = GpuSpec.model_validate(spec)
    assert gpu.name == names
    assert (None if gpu.memory is None else (gpu.memory.min, gpu.memory.max)) == memory
    assert (gpu.count.min, gpu.count.max) == count
    assert gpu.vendor == vendor
    assert GpuSpec.model_validate(gpu.model_dump()) == gpu


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        pytest.param("A100::2", "empty part", id="empty-token"),
        pytest.param("A100:H100", "name twice", id="two-names"),
        pytest.param("2:4", "count twice", id="two-counts"),
        pytest.param("80GB:40GB", "memory twice", id="two-memories"),
        pytest.param("80GB..24GB", "order", id="reversed-range"),
        pytest.param("A100,:2", "empty", id="empty-name"),
        pytest.param("..", "empty range", id="empty-range"),
        pytest.param("8XB", "invalid size", id="bad-size"),
        pytest.param(True, "invalid GPU", id="bool"),
        pytest.param({"vendor": "matrox"}, "unknown GPU vendor", id="bad-vendor"),
        pytest.param({"nme": "A100"}, "Extra inputs", id="unknown-key"),
        pytest.param("1..2..3", "invalid range", id="double-range"),
    ],
)
def test_gpu_grammar_errors(spec: Any, needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        GpuSpec.model_validate(spec)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("16GB", 16.0, id="gb"),
        pytest.param("16 gb", 16.0, id="lowercase-space"),
        pytest.param("1TB", 1024.0, id="tb"),
        pytest.param("512MB", 0.5, id="mb"),
        pytest.param("8", 8.0, id="bare-number-string"),
        pytest.param(8, 8.0, id="int"),
        pytest.param(0.5, 0.5, id="float"),
    ],
)
def test_parse_memory(value: object, expected: float) -> None:
    assert parse_memory(value) == expected


@pytest.mark.parametrize(
    "value", [pytest.param(v, id=repr(v)) for v in ["GB", "-1GB", "1PB", "inf", True, None, [1]]]
)
def test_parse_memory_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_memory(value)


@pytest.mark.parametrize(
    ("value", "bounds"),
    [
        pytest.param(2, (2, 2), id="exact"),
        pytest.param("2..", (2, None), id="open-max"),
        pytest.param("..8", (None, 8), id="open-min"),
        pytest.param("2..8", (2, 8), id="closed"),
        pytest.param(" 2 .. 8 ", (2, 8), id="spaces"),
        pytest.param({"min": 2, "max": None}, (2, None), id="dumped-form"),
    ],
)
def test_int_range(value: object, bounds: tuple[int | None, int | None]) -> None:
    r = IntRange.model_validate(value)
    assert (r.min, r.max) == bounds


@pytest.mark.parametrize("value", ["8..2", "..", "two", "2.5", -1, {"min": 1, "mx": 2}])
def test_int_range_rejects(value: object) -> None:
    with pytest.raises(ValidationError):
        IntRange.model_validate(value)


def test_range_str_forms() -> None:
    assert str(IntRange.model_validate("2..")) == "2.."
    assert str(IntRange.model_validate(3)) == "3"
    assert str(MemoryRange.model_validate("24GB..80GB")) == "24GB..80GB"


def test_resources_defaults_are_dstacks() -> None:
    res = ResourcesSpec()
    assert (res.cpu.min, res.cpu.max) == (2, None)
    assert (res.memory.min, res.memory.max) == (8.0, None)
    assert (res.disk.min, res.disk.max) == (100.0, None)
    assert res.gpu is None


@pytest.mark.parametrize(
    ("raw", "attr", "bounds"),
    [
        pytest.param({"cpu": 4}, "cpu", (4, 4), id="cpu-exact"),
        pytest.param({"cpu": "2..8"}, "cpu", (2, 8), id="cpu-range"),
        pytest.param({"memory": "16GB.."}, "memory", (16.0, None), id="memory-open"),
        pytest.param({"disk": "200GB"}, "disk", (200.0, 200.0), id="disk-string"),
        pytest.param({"disk": {"size": "100GB..1TB"}}, "disk", (100.0, 1024.0), id="disk-size-mapping"),
        pytest.param({"disk": 50}, "disk", (50.0, 50.0), id="disk-number"),
    ],
)
def test_resources_fields(raw: dict[str, Any], attr: str, bounds: tuple[float | None, float | None]) -> None:
    res = ResourcesSpec.model_validate(raw)
    value = getattr(res, attr)
    assert (value.min, value.max) == bounds
    assert ResourcesSpec.model_validate(res.model_dump()) == res


def test_gpu_requirement_conversion() -> None:
    req = GpuSpec.model_validate("nvidia:A100,H100:40GB..:2").to_requirement()
    assert req.names == ("A100", "H100")
    assert req.memory_gb == Range(40.0, None)
    assert req.count == Range(2, 2)
    assert req.vendor == "nvidia"
