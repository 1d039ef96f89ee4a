"""`canonical.model_json` (a config's canonical JSON written from its field values) is byte for
byte `json.dumps(model_dump(mode="json"), sort_keys=True, compact)`, and the spec hash it makes is
the plain formula's, over the repository's examples, the dstack page's examples, the test suite's
config texts, generated configs and edge values (inf, NaN, -0.0, exponent floats, non-ASCII, DEL,
huge ints, empty containers), with the fast way (a plan of fields per model class) and without."""

from __future__ import annotations

import hashlib
import json
import math
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
from reconciler.previews.decision import PreviewSettings, clamp_config
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
    "type: service\ncommands: [x]\nport: 80\nresources: {memory: 1e300, disk: -0.0}\nmax_price: 1e300\n",
    "type: service\ncommands: [x]\nport: 80\nresources: {memory: 0.0, disk: 9999999999999999.0..}\n",
    "type: service\ncommands: [x]\nport: 80\nenv: {}\nbackends: []\nregions: []\nprobes: []\nrate_limits: []\n",
    "type: service\ncommands: ['', 'ünïcödé 日本 \U0001F600']\nport: 80\nenv: {A: '', B: '\\u0000'}\n",
    "type: service\ncommands: [x]\nport: 80\nreplicas: 0..2\nscaling: {metric: rps, target: 0.0001}\n",
    "type: service\ncommands: [x]\nport: 80\nreplicas: 0..2\nscaling: {metric: rps, target: 9.999999999999999e-05}\n",
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
    assert len(found) >= 40  # examples (7), the page (5), the suite (20), the edges (23)
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


def both_ways(config: ServiceConfig, **kwargs: Any) -> tuple[bytes, bytes]:
    """(the fast way's bytes, the plain way's)."""
    fast = canonical.model_json(config, **kwargs)
    canonical.FAST = False
    try:
        return fast, canonical.model_json(config, **kwargs)
    finally:
        canonical.FAST = True


def test_the_fast_way_off_gives_the_same_bytes(all_configs: list[ServiceConfig]) -> None:
    for config in all_configs:
        for kwargs in ({"shared": SHARED_FIELDS}, {"exclude": ROUTING_ONLY, "nulls": NO_EFFECT, "shared": SHARED_FIELDS}):
            fast, plain = both_ways(config, **kwargs)
            assert fast == plain


def test_a_list_exclude_and_preview_copies_give_the_same_bytes(all_configs: list[ServiceConfig]) -> None:
    """An `exclude` that cannot key the plan cache (a list) and the previews' `model_copy(update=)`
    configs (not validated again: the plan trusts their values' types)."""
    for i, config in enumerate(all_configs):
        payload = config.model_dump(mode="json", exclude={"probes", "env"})
        assert canonical.model_json(config, exclude=["probes", "env"]) == reference(payload)
        preview = clamp_config(config, i + 1, PreviewSettings(enabled=True))
        preview = preview.model_copy(update={"name": f"p-{i}", "env": {**preview.env, "PR": str(i)}})
        assert canonical.model_json(preview, shared=SHARED_FIELDS) == reference(preview.model_dump(mode="json"))


def exponent_free(value: float) -> bool:
    return math.isfinite(value) and "e" not in repr(value)


def neighbours(value: float) -> list[float]:
    out = [value]
    for _ in range(3):
        out += [math.nextafter(out[0], math.inf), math.nextafter(out[-1], -math.inf)]
        out[0] = out[-2]
    return out


@pytest.mark.parametrize("edge", [1e-4, 1e16, 0.0, 5e-324, 1e300, math.inf])
def test_the_float_check_is_repr_s_exponent_form(edge: float) -> None:
    """`_finite`'s two comparisons say what `"e" in repr(x)` and `isfinite` say, at the edges."""
    for value in {*neighbours(edge), *(-v for v in neighbours(edge)), math.nan, -0.0}:
        try:
            canonical._finite(value)
        except canonical._Plain:
            assert not exponent_free(value), value
        else:
            assert exponent_free(value), value


@settings(max_examples=500, deadline=None)
@given(value=st.floats() | st.floats(min_value=1e-5, max_value=1e-3) | st.floats(min_value=1e15, max_value=1e17))
def test_the_float_check_over_generated_floats(value: float) -> None:
    try:
        canonical._finite(value)
        fast = True
    except canonical._Plain:
        fast = False
    assert fast == exponent_free(value)


def test_only_float_fields_are_checked_in_a_service_config() -> None:
    """The plan: str/int/bool/None, enums, models and lists / str-keyed maps of them need no check."""
    plan = canonical._plan(ServiceConfig, ROUTING_ONLY, SHARED_FIELDS)
    assert plan.floats == ("max_price",) and plan.other == ()
    assert set(plan.drop) == ROUTING_ONLY and plan.shared == ("resources",)


floats = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([1e16, 1e-5, 1e-4, -0.0, 5e-324, 1e300])
words = st.text(max_size=8)


texts = st.text(max_size=6)  # any code point: non-ASCII, DEL, controls, surrogates-free
configs_raw = st.fixed_dictionaries(
    {"type": st.just("service"), "commands": st.lists(texts, min_size=1, max_size=3), "port": st.integers(1, 65535)},
    optional={
        "env": st.dictionaries(st.from_regex(r"[A-Z_][A-Z0-9_]{0,5}", fullmatch=True), st.none() | texts, max_size=3),
        "max_price": st.none() | floats.filter(lambda f: f > 0),
        "resources": st.fixed_dictionaries({}, optional={"memory": floats.filter(lambda f: f != f or f >= 0),
                                                          "cpu": st.integers(0, 10**30), "disk": st.floats(0, 1e20)}),
        "backends": st.lists(st.sampled_from(["local", "aws", "azure"]), max_size=2, unique=True),
        "spot_policy": st.sampled_from(["spot", "on-demand", "auto"]),
        "max_duration": st.sampled_from(["off", "1h", 30]),
        "retry": st.booleans(),
        "auth": st.booleans(),
        "model": texts.filter(str.strip),
        "rate_limits": st.lists(st.fixed_dictionaries({"rps": floats.filter(lambda f: f > 0 and f != math.inf)},
                                                      optional={"burst": st.integers(0, 2**70)}), max_size=1),
    },
)  # fmt: skip


def assert_both_ways_equal(raw: dict[str, Any]) -> None:
    try:
        config = ServiceConfig.model_validate(raw)
    except ValueError:
        return  # (refused by validation: nothing to write)
    assert canonical.model_json(config, shared=SHARED_FIELDS) == reference(config.model_dump(mode="json"))
    assert spec_hash(config) == plain_spec_hash(config)
    desired = {"exclude": ROUTING_ONLY, "nulls": NO_EFFECT, "shared": SHARED_FIELDS}
    fast, plain = both_ways(config, **desired)
    assert fast == plain


@settings(max_examples=40, deadline=None)
@given(raw=configs_raw)
def test_generated_configs_few(raw: dict[str, Any]) -> None:
    assert_both_ways_equal(raw)


@pytest.mark.slow  # ~15 s: the examples, edge values and the few above are the fast suite's
@settings(max_examples=400, deadline=None)
@given(raw=configs_raw)
def test_generated_configs_many(raw: dict[str, Any]) -> None:
    assert_both_ways_equal(raw)


@pytest.mark.slow  # ~7 s
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
    assert_both_ways_equal(raw)


def test_the_examples_take_the_fast_way() -> None:
    """(not the plain way behind it): the examples' configs are written by msgspec from their fields."""
    texts = example_configs()
    assert texts
    for i, text in enumerate(texts):
        config = parse_service_text(text, f"e{i}/.dstack.yml").config
        assert config is not None
        fast = canonical._ENCODE(canonical._fields(config, SHARED_FIELDS))
        assert fast == reference(config.model_dump(mode="json"))
