"""The spec hash's canonical JSON is byte for byte `json.dumps(sort_keys=True, compact)`, whichever
encoder wrote it: a changed hash would roll every replica of every service on upgrade."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.config.loader import canonical_json, load_tree, spec_hash

ROOT = Path(__file__).resolve().parents[2]


def reference(payload: Any) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0.0, -0.0, 1e-4, 9.999e-5, 1e15, 9999999999999998.0, 1e16, 5e-324, 0.5, 100.0, 3.1])
    | st.text(max_size=12)
    | st.sampled_from(["", "ASCII only", "é", "\x7f", '\x00\x1f\n\t"\\', "\u2028", "😀", "0.00001", "1e5"])
)
payloads = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)


# The same property twice: 100 examples in the fast suite, 1000 in the slow one (.ci/run runs both).
@settings(max_examples=100, deadline=None)
@given(payloads)
def test_canonical_json_is_json_dumps(payload: Any) -> None:
    assert canonical_json(payload) == reference(payload)


@pytest.mark.slow
@settings(max_examples=1000, deadline=None)
@given(payloads)
def test_canonical_json_is_json_dumps_over_many_examples(payload: Any) -> None:
    assert canonical_json(payload) == reference(payload)


def test_spec_hashes_of_the_examples_are_unchanged() -> None:
    """The hash formula as it was: sha256 of json.dumps of the dump (probes/rate_limits dropped
    when empty)."""
    loaded = load_tree(ROOT / "examples")
    assert loaded.services
    for service in loaded.services.values():
        payload = service.config.model_dump(mode="json")
        for added in ("probes", "rate_limits"):
            if not payload.get(added):
                payload.pop(added, None)
        expected = hashlib.sha256(reference(payload)).hexdigest()
        assert service.spec_hash == expected == spec_hash(service.config)
