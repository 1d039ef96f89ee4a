"""The loader's promise: no input makes it raise (random YAML, random text, random bytes)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.config.loader import load_tree
from reconciler.config.parse import FileKind, parse_service_text
from reconciler.config.profiles import parse_profiles_text

KEYS = [
    "type",
    "name",
    "image",
    "python",
    "env",
    "commands",
    "port",
    "resources",
    "model",
    "replicas",
    "scaling",
    "auth",
    "retry",
    "max_duration",
    "spot_policy",
    "gpu",
    "cpu",
    "format",
    "metric",
    "target",
    "probes",
    "comands",
    "min",
    "max",
    "size",
    "prefix",
    "chat_template",
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 100_000),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(
        [
            "service",
            "task",
            "1..4",
            "..",
            "A100:2",
            "80GB..",
            "5m",
            "8080:8000",
            "tgi",
            "openai",
            "rps",
            "KEY=V",
        ]
    ),
)
VALUES: Any = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)
    ),
    max_leaves=20,
)
DOCS = st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=10).map(lambda d: {"type": "service", **d})


@settings(max_examples=100, deadline=None)
@given(DOCS)
def test_parse_never_raises_on_random_configs(doc: dict[str, Any]) -> None:
    text = yaml.safe_dump(doc)
    parsed = parse_service_text(text, "r.dstack.yml")
    assert (parsed.config is None) == (parsed.kind != FileKind.SERVICE)
    for d in parsed.diagnostics:
        assert d.line >= 1 and d.column >= 1 and d.format()
    if parsed.config is not None:  # whatever validates also round-trips
        again = type(parsed.config).model_validate(parsed.config.model_dump())
        assert again == parsed.config


@settings(max_examples=100, deadline=None)
@given(
    st.text(
        alphabet=st.sampled_from(list("type: service\n-[]{}:,'\"&*!|>%@`#?.0123456789abAZ \t\x00\x85\ufeff")),
        max_size=200,
    )
)
def test_parse_never_raises_on_yamlish_text(text: str) -> None:
    parsed = parse_service_text(text, "t.dstack.yml")
    assert all(d.line >= 1 for d in parsed.diagnostics)
    parse_profiles_text(text)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300), st.binary(max_size=100))
def test_load_tree_never_raises_on_random_bytes(service: bytes, profiles: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "svc").mkdir()
        (root / "svc/.dstack.yml").write_bytes(service)
        (root / ".dstack").mkdir()
        (root / ".dstack/profiles.yml").write_bytes(profiles)
        (root / ".gitignore").write_bytes(profiles)
        result = load_tree(root)
        assert set(result.services) | set(result.failed) <= {"svc"}
        assert not set(result.services) & set(result.failed)
