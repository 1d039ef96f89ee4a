"""A cold desired set's fast paths equal the plain ones: the config's JSON written from its
attributes (reconciler.config.canonical's model_json), requirements kept by resources instance, summaries
made when read, services made without their `__init__`, the table kept per loaded file. Every
field of every service (summaries read out, spec hashes) is compared with the memos and fast paths
off, over varied configs: the examples, the dstack page's examples, generated ones and odd values.
"""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import fields, replace
from pathlib import Path

import pytest

from backends.base import ReplicaSpec
from reconciler.config.loader import LoadedService, LoadResult, load_tree
from reconciler.engine import memo
from reconciler.engine.desired import (
    DesiredService,
    DesiredSet,
    build_desired,
    env_values_hash,
    replica_spec_hash,
    replica_spec_hash_plain,
)
from reconciler.engine.desired_parts import _config_json, _requirements, _route, config_json, file_parts
from reconciler.engine.desired_summary import Summary, _resources_text, summary
from reconciler.state.records import RouteInfo

# the odd values below are what validation never makes: pydantic warns when it dumps them
pytestmark = pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning")
ROOT = Path(__file__).resolve().parents[2]
SEED = Path("/work/shared/seed/dstack-services.txt")


def seed_texts() -> list[str]:
    """The `type: service` examples of the dstack page users know (when it is on this machine)."""
    if not SEED.exists():
        return []
    out: list[list[str]] = []
    current: list[str] | None = None
    for line in SEED.read_text().splitlines():
        if line.strip() == "type: service":
            current = [line]
            out.append(current)
        elif current is not None:
            if line and not (line[0] in " -#" or re.match(r"^[a-z_]+:", line)):
                current = None  # prose again
            else:
                current.append(line)
    return ["\n".join(lines) + "\n" for lines in out]


def varied_text(i: int) -> str:
    """Configs that differ in every field the desired set reads (resources, env, model, scaling,
    probes, rate limits, placement), so nothing is shared by accident."""
    lines = ["type: service", f"name: v-{i:03d}"]
    lines.append(f"image: ghcr.io/x/img{i % 17}:latest" if i % 3 == 0 else f'python: "3.{10 + i % 3}"')
    lines += ["env:", f"  - GREETING=hello-{i}"]
    if i % 4 == 0:
        lines.append("  - SHARED=same")
    if i % 5 == 0:
        lines.append("  - HF_TOKEN")
    lines += ["commands:", f"  - python3 app.py {8000 + i % 7}"]
    if i % 2:
        lines.append("  - echo done")
    lines += [f"port: {8000 + i % 7}" if i % 12 else f"port: {8000 + i % 7}:{9000 + i}"]
    lines.append(f"auth: {'true' if i % 2 else 'false'}")
    if i % 6:
        lines.append("backends: [local]" if i % 6 != 1 else "backends: [aws, local]")
    lines += ["resources:", f"  cpu: {1 + i % 8}..", f"  memory: {64 * (1 + i % 13)}MB..", f"  disk: {1 + i % 5}GB.."]
    if i % 9 == 0:
        lines.append(f"  gpu: {16 + 8 * (i % 4)}GB")
    if i % 7 == 0:
        lines += [f"replicas: 1..{2 + i % 3}", "scaling:", "  metric: rps", f"  target: {1 + i % 10}", "  scale_up_delay: 30s"]
    else:
        lines.append(f"replicas: {1 + i % 2}")
    if i % 8 == 0:
        lines += ["model:", f"  name: org/model-{i}", "  format: openai" if i % 16 else "  format: tgi"]
    if i % 11 == 0:
        lines += ["probes:", "  - type: http", f"    url: /health{i % 3}"]
    if i % 13 == 0:
        lines += ["rate_limits:", "  - rps: 5", f"    prefix: /v{i % 3}", "  - rps: 2"]
    if i % 10 == 0:
        lines += ["spot_policy: auto", f"max_price: {0.5 + i % 4}", "regions: [us-east-1]", "instance_types: [m5.large]"]
    elif i % 10 == 5:
        lines += ["spot_policy: spot", "retry: true"]
    return "\n".join(lines) + "\n"


def write(root: Path, texts: list[str]) -> Path:
    for i, text in enumerate(texts):
        (root / f"s{i:03d}").mkdir(parents=True)
        (root / f"s{i:03d}" / ".dstack.yml").write_text(text)
    return root


def odd(ls: LoadedService, i: int) -> LoadedService:
    """Values validation never makes but a copy with `update` may: the plain path must decide."""
    updates: list[dict[str, object]] = [
        {"env": {"GRÜSSE": "grüße \u2603", "Q": '"', "DEL": "a\x7fb", "CTRL": "\x01\x1f\t\n"}},
        {"commands": ["echo 'x\\y'", "\u00e9"]},
        {"max_price": 1e16},
        {"max_price": 1e-05, "spot_policy": "spot"},  # a plain str where the enum goes
        {"max_price": 0.1 + 0.2, "instance_types": ["p4d.24xlarge"]},
        {"max_price": float("inf"), "regions": ["\u00e9u"]},
        {"image": "img", "python": None, "name": "x" * 3},
    ]
    return replace(ls, name=f"{ls.name}-odd{i}", config=ls.config.model_copy(update=updates[i % len(updates)]))


@pytest.fixture(scope="module")
def loads(tmp_path_factory: pytest.TempPathFactory) -> list[LoadResult]:
    made = [load_tree(p) for p in sorted((ROOT / "examples").iterdir()) if p.is_dir()]
    made.append(load_tree(write(tmp_path_factory.mktemp("varied"), [varied_text(i) for i in range(60)])))
    seeds = seed_texts()
    if seeds:
        made.append(load_tree(write(tmp_path_factory.mktemp("seed"), seeds)))
    services = [ls for load in made for ls in load.services.values()]
    assert len(services) > 60
    odds = [odd(ls, i) for i, ls in enumerate(services[:20])]
    made.append(LoadResult(services={ls.name: ls for ls in odds}))
    return made


SCENARIOS = [
    pytest.param({"HF_TOKEN": "t", "OPENAI_API_KEY": "k"}, ["local", "aws"], (), False, True, id="prod"),
    pytest.param({}, ["local", "aws"], (), True, False, id="pull-request"),
    pytest.param({}, ["aws"], (), False, True, id="missing-env-one-backend"),
    pytest.param({"HF_TOKEN": "t"}, ["local", "aws", "azure"], ("aws", "azure"), False, True, id="default-backends"),
    pytest.param({}, [], (), False, True, id="no-backend"),
]


def build(load: LoadResult, env: dict[str, str], backends: list[str], default_backends: tuple[str, ...], missing_ok: bool, trusted: bool) -> DesiredSet:
    return build_desired(
        load, revision="r1", workdir="/w", env=env, salt="s", backends=backends,
        ships_workdir=lambda b: b == "local", code_hash=lambda: "c" * 64, domain="example.com",
        default_backends=default_backends, missing_env_ok=missing_ok, trusted=trusted,
    )  # fmt: skip


def plain_build(*args: object) -> DesiredSet:
    memo.enabled = False
    try:
        return build(*args)  # type: ignore[arg-type]
    finally:
        memo.enabled = True


def every_field(d: DesiredService) -> dict[str, object]:
    out = {f.name: getattr(d, f.name) for f in fields(d)}
    out["summary"] = dict(d.summary)
    out["template"] = {f.name: getattr(d.template, f.name) for f in fields(d.template)}
    r = d.route
    out["route"] = (r.model_dump(), vars(r), r.model_fields_set, r.__pydantic_extra__, r.__pydantic_private__)
    return out


@pytest.mark.parametrize(("env", "backends", "default_backends", "missing_ok", "trusted"), SCENARIOS)
def test_the_fast_set_is_the_plain_one(loads: list[LoadResult], env: dict[str, str], backends: list[str], default_backends: tuple[str, ...], missing_ok: bool, trusted: bool) -> None:
    args = (env, backends, default_backends, missing_ok, trusted)
    for load in loads:
        memo.clear_all()
        fast, again, plain = build(load, *args), build(load, *args), plain_build(load, *args)
        assert fast == plain
        assert (fast.blocked, fast.warnings) == (plain.blocked, plain.warnings)
        assert all(again.services[n] is d for n, d in fast.services.items())  # kept
        for name, d in fast.services.items():
            p = plain.services[name]
            assert every_field(d) == every_field(p)
            assert type(d.summary) is Summary and d.summary == p.summary
            env_hash = env_values_hash("s", d.template.env)
            files = "c" * 64 if d.backend == "local" else None
            ls = load.services[name]
            assert d.spec_hash == replica_spec_hash_plain(ls, env_hash, d.backend, files)
            assert dict(d.summary) == summary(ls, d.backend, d.template.env, env_hash, files)
            for b, h in d.candidates.items():
                assert h == replica_spec_hash_plain(ls, env_hash, b, "c" * 64 if b == "local" else None)


def test_the_config_json_is_the_reference(loads: list[LoadResult]) -> None:
    for load in loads:
        for ls in load.services.values():
            assert config_json(ls) == _config_json(ls), ls.name
            for backend, files in (("local", "f" * 64), ("aws", None), ('we"ird\u00e9', "x")):
                assert replica_spec_hash(ls, "e" * 64, backend, files) == replica_spec_hash_plain(ls, "e" * 64, backend, files)
            assert _requirements(ls.config) == ls.config.requirements()
    floated = replace(ls, config=ls.config.model_copy(update={"commands": [1.5], "max_price": None}))  # by hand only
    assert config_json(floated) == _config_json(floated)


def test_routes_made_without_validation_equal_the_validated(loads: list[LoadResult]) -> None:
    made = 0
    for load in loads:
        for name, ls in load.services.items():
            route = file_parts(ls, name, "example.com").route
            validated = RouteInfo(**{f: getattr(route, f) for f in RouteInfo.model_fields})
            assert route == validated and vars(route) == vars(validated)
            assert route.model_fields_set == validated.model_fields_set
            assert pickle.loads(pickle.dumps(route)) == validated
            assert route.model_copy(update={"auth": True}).auth is True
            made += bool(route.probes and route.rate_limits and route.model)
    assert made  # every kind of value met
    # a value of another type than the field's: validated (here coerced to a tuple of models)
    odd = _route(host="h", auth=True, model=None, min_replicas=1, max_replicas=1, probes=[{"type": "http", "url": "/x"}], rate_limits=())
    assert type(odd.probes) is tuple and type(odd.probes[0]).__name__ == "ProbeSpec"


def test_services_made_without_init_equal_the_constructed(loads: list[LoadResult]) -> None:
    ds = build(loads[-2], {"HF_TOKEN": "t"}, ["local", "aws"], (), False, True)
    assert ds.services
    for d in ds.services.values():
        made = DesiredService(**{f.name: getattr(d, f.name) for f in fields(d)})
        assert made == d and vars(made) == vars(d)
        template = ReplicaSpec(**{f.name: getattr(d.template, f.name) for f in fields(d.template)})
        assert template == d.template and vars(template) == vars(d.template)
        assert d.spec_for(2).replica_id.endswith("-2")


def test_a_summary_reads_compares_and_pickles_as_its_dict(loads: list[LoadResult]) -> None:
    ds = build(loads[-2], {"HF_TOKEN": "t"}, ["local", "aws"], (), False, True)
    d = next(iter(ds.services.values()))
    s = d.summary
    assert isinstance(s, Summary)
    as_dict = dict(s)
    assert s == as_dict and as_dict == s
    assert (s != as_dict, as_dict != s) == (False, False)  # `!=` (targets.py compares so) both ways
    assert s != {**as_dict, "backend": "elsewhere"} and {**as_dict, "extra": "x"} != s
    assert list(s) == list(as_dict) and len(s) == len(as_dict) and repr(s) == repr(as_dict)
    assert "backend" in s and s["backend"] == d.backend and s.get("nothing") is None
    assert pickle.loads(pickle.dumps(s)) == as_dict
    assert pickle.loads(pickle.dumps(d)) == d
    assert {**s, "backend": "aws"}["backend"] == "aws"
    assert s != 3


def test_the_table_follows_the_inputs_and_is_forgotten(loads: list[LoadResult]) -> None:
    load = loads[-2]
    prod = ({"HF_TOKEN": "t"}, ["local", "aws"], (), False, True)
    first = build(load, *prod)
    pr = build(load, {}, ["local", "aws"], (), True, False)  # other inputs: other outcomes
    assert all(pr.services[n] is not d for n, d in first.services.items() if n in pr.services)
    assert all(build(load, *prod).services[n] is d for n, d in first.services.items())  # both kept
    other_domain = build_desired(load, revision="r1", workdir="/w", env={"HF_TOKEN": "t"}, salt="s",
                                 backends=["local", "aws"], ships_workdir=lambda b: b == "local",
                                 code_hash=lambda: "c" * 64, domain="other.example")  # fmt: skip
    assert {d.route.host.split(".", 1)[1] for d in other_domain.services.values()} == {"other.example"}
    new_code = build_desired(load, revision="r2", workdir="/w", env={"HF_TOKEN": "t"}, salt="s",
                             backends=["local", "aws"], ships_workdir=lambda b: b == "local",
                             code_hash=lambda: "d" * 64, domain="example.com")  # fmt: skip
    for n, d in first.services.items():
        if d.backend == "local":
            assert new_code.services[n].spec_hash != d.spec_hash
        elif not d.candidates:  # it never asked for the code hash
            assert new_code.services[n] is d
    memo.clear_all()
    fresh = build(load, *prod)
    assert fresh == first and all(fresh.services[n] is not d for n, d in first.services.items())


@pytest.fixture(autouse=True)
def _clean() -> None:
    memo.clear_all()


def test_the_kept_resources_text_is_the_plain_dump(loads: list[LoadResult]) -> None:
    memo.clear_all()
    for load in loads:
        for ls in load.services.values():
            res = ls.config.resources
            plain = json.dumps(res.model_dump(mode="json", exclude_none=True), sort_keys=True)
            assert _resources_text(res) == plain
            assert _resources_text(res) is _resources_text(res)  # kept by the instance
            other = res.model_copy(deep=True)  # an equal value, another instance: its own text
            assert _resources_text(other) == plain
