"""The range validators' fast paths (`2..`, `16GB..80GB`) give what the general path gives: the
same bounds, or the same error, for every string."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from reconciler.config.resources import (
    IntRange,
    MemoryRange,
    _ordered,
    _parse_count,
    _split_range,
    parse_memory,
)

words = st.text(alphabet="0123456789. gGbBmMtTkK²٣\t-+e", max_size=12) | st.sampled_from(
    ["2..", "..8", "1..8", "4", " 4 ", "8..4", "..", "1..2..3", "16GB..", "24GB..80GB", "512MB", "1.5TB", "0.", "1" * 400]
)


def general(value: str, parse: Any) -> Any:
    """The validators' general path, as it was before the fast paths."""
    bounds = _split_range(value)
    if bounds is None:
        exact = parse(value)
        return {"min": exact, "max": exact}
    low, high = (None if b is None else parse(b) for b in bounds)
    return _ordered(low, high, value)


def outcome(model: Any, value: str) -> Any:
    try:
        return model.model_validate(value).model_dump()
    except ValidationError as e:
        return [(err["type"], err["msg"]) for err in e.errors(include_url=False)]


def expected(model: Any, value: str, parse: Any) -> Any:
    try:
        raw = general(value, parse)
    except ValueError as e:
        return [("value_error", f"Value error, {e}")]
    return outcome(model, raw)


@settings(max_examples=1500, deadline=None)
@given(words)
def test_int_range_fast_path(value: str) -> None:
    assert outcome(IntRange, value) == expected(IntRange, value, _parse_count)


@settings(max_examples=1500, deadline=None)
@given(words)
def test_memory_range_fast_path(value: str) -> None:
    assert outcome(MemoryRange, value) == expected(MemoryRange, value, parse_memory)
