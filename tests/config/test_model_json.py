"""`canonical.model_json` (a config's canonical JSON written from its field values) is byte for
byte `json.dumps(model_dump(mode="json"), sort_keys=True, compact)`, and the spec hash it makes is
the plain formula's, over the repository's examples, the dstack page's examples, the test suite's
config texts and edge values (inf, NaN, exponent floats, non-ASCII, DEL, huge ints)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.config import canonical
from reconciler.config.loader import SHARED_FIELDS, spec_hash
from reconciler.config.models import ServiceConfig
from reconciler.config.parse import parse_service_text
from tests.config.test_quick_yaml import example_configs, seed_examples

ROOT = Path(__file__).resolve().parents[2]
ROUTING_ONLY = frozenset({"replicas", "scaling", "auth", "model", "probes", "rate_limits"})
NO_EFFECT = ("retry", "max_duration")

EDGE = [
    "type: service\ncommands: [x]\nport: 80\nmax_price: .inf\n",
    "type: service\ncommands: [x]\nport: 80\nmax_price: 1e16\n",
    "type: service\ncommands: [x]\nport: 80\nmax_price: 0.00001\n",
    "type: service\ncommands: [x]\nport: 80\nmax_price: 0.0001\n",
    "type: service\ncommands: [x]\nport: 80\nmax_price: 9999999999999998.0\n",
    "type: service\ncommands: [x]\nport: 80\nresources: {memory: .nan}\n",
    "type: service\ncommands: [x]\nport: 80\nresources: {memory: .inf, disk: 5e-324}\n",
    "type: service\ncommands: [x]\nport: 80\nresources: {cpu: '99999999999999999999999..'}\n",
    "type: service\ncommands: ['écho ☃', \"a\\x7fb\", \"tab\\there\"]\nport: 80\nenv: {A: 'ü', B: 1.5, C: 1e20}\n",
    "type: service\ncommands: [x]\nport: 80\nenv: [\"Z=\\u2028\", 'Y=0.00001', 'X']\n",
    "type: service\ncommands: [x]\nport: 80\nreplicas: 1..3\nscaling: {metric: rps, target: .inf}\n",
    "type: service\ncommands: [x]\nport: 80\nreplicas: 1..3\nscaling: {metric: rps, target: 1e-7}\n",
    "type: service\ncommands: [x]\nport: 80\nrate_limits: [{rps: .inf}, {prefix: /a, rps: 1e17, burst: 3}]\n",
    "type: service\ncommands: [x]\nport: 80\nprobes: [{url: /h, headers: [{name: X-A, value: 'ü'}]}]\n",
    "type: service\nimage: i\nport: '8080:80'\nmodel: {name: m, format: tgi, chat_template: '{{x}}', eos_token: </s>}\n",
    "type: service\nimage: i\nport: 80\nretry: true\nmax_duration: off\nspot_policy: auto\nbackends: [aws]\n",
    "type: service\nimage: i\nport: 80\nresources: {gpu: 'A100,H100:80GB..:2', disk: {size: 1TB}}\n",
]


def suite_texts() -> list[str]:
    """Config texts written in the test suite (a `type: service` string literal, roughly)."""
    found: list[str] = []
    block = re.compile(r'"""\\?\n(type: service\n.*?)"""', re.S)
    for path in sorted((ROOT / "tests").rglob("*.py")):
        found += block.findall(path.read_text(encoding="utf-8"))
    return found


def configs() -> list[ServiceConfig]:
    texts = [*example_configs(), *seed_examples(), *suite_texts(), *EDGE]
    out: list[ServiceConfig] = []
    for i, text in enumerate(texts):
        parsed = parse_service_text(text, f"c{i}/.dstack.yml")
        if parsed.config is not None:
            out.append(parsed.config)
    return out


def reference(payload: Any) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def plain_spec_hash(config: ServiceConfig) -> str:
    payload = config.model_dump(mode="json")
    for added in ("probes", "rate_limits"):
        if not payload.get(added):
            payload.pop(added, None)
    return hashlib.sha256(reference(payload)).hexdigest()


@pytest.fixture(scope="module")
def all_configs() -> list[ServiceConfig]:
    found = configs()
    assert len(found) >= 35  # examples (7), the page (5), the suite (20), the edges (17)
    return found


def test_model_json_is_json_dumps_of_the_dump(all_configs: list[ServiceConfig]) -> None:
    for config in all_configs:
        for _ in range(2):  # the second time from the kept texts of shared values
            assert canonical.model_json(config, shared=SHARED_FIELDS) == reference(config.model_dump(mode="json"))
            assert spec_hash(config) == plain_spec_hash(config)
            payload = config.model_dump(mode="json", exclude=set(ROUTING_ONLY))
            payload.update(dict.fromkeys(NO_EFFECT))
            fast = canonical.model_json(config, exclude=ROUTING_ONLY, nulls=NO_EFFECT, shared=SHARED_FIELDS)
            assert fast == reference(payload)


def test_edge_values_take_the_plain_way_where_msgspec_differs(all_configs: list[ServiceConfig]) -> None:
    """The edge configs are there (not refused by validation), so the checks above met them."""
    texts = [reference(c.model_dump(mode="json")) for c in all_configs]
    for needle in (b"Infinity", b"NaN", b"1e+16", b"1e-05", b"\\u00fc", b"\\u007f", b"99999999999999999999999"):
        assert any(needle in t for t in texts), needle


def test_the_fast_way_off_gives_the_same_bytes(all_configs: list[ServiceConfig]) -> None:
    canonical.FAST = False
    try:
        slow = [canonical.model_json(c, shared=SHARED_FIELDS) for c in all_configs]
    finally:
        canonical.FAST = True
    assert slow == [canonical.model_json(c, shared=SHARED_FIELDS) for c in all_configs]


floats = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([1e16, 1e-5, 1e-4, -0.0, 5e-324])
words = st.text(max_size=8)


@pytest.mark.slow  # ~7 s: the examples and edge values above are the fast suite's
@settings(max_examples=300, deadline=None)
@given(
    price=st.none() | floats.filter(lambda f: f > 0),
    memory=floats.filter(lambda f: f != f or f >= 0),
    env=st.dictionaries(st.from_regex(r"[A-Z_][A-Z0-9_]{0,5}", fullmatch=True), st.none() | words, max_size=3),
    commands=st.lists(words, min_size=1, max_size=3),
    rps=floats.filter(lambda f: f != f or f > 0),
)
def test_generated_configs(price: float | None, memory: float, env: dict[str, str | None], commands: list[str], rps: float) -> None:
    raw: dict[str, Any] = {
        "type": "service", "commands": commands, "port": 80, "env": env, "max_price": price,
        "resources": {"memory": memory}, "rate_limits": [{"rps": rps}] if rps == rps else [],
    }  # fmt: skip
    config = ServiceConfig.model_validate(raw)
    assert canonical.model_json(config, shared=SHARED_FIELDS) == reference(config.model_dump(mode="json"))
    assert spec_hash(config) == plain_spec_hash(config)


def test_the_examples_take_the_fast_way() -> None:
    """(not the plain way behind it): the examples' configs are written by msgspec from their fields."""
    texts = example_configs()
    assert texts
    for i, text in enumerate(texts):
        config = parse_service_text(text, f"e{i}/.dstack.yml").config
        assert config is not None
        fast = canonical._ENCODE(canonical._fields(config, SHARED_FIELDS))
        assert fast == reference(config.model_dump(mode="json"))
