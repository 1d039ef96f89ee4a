"""One file's text -> diagnostics at the right line/column/field, warnings, suggestions."""

from __future__ import annotations

import textwrap

import pytest

from reconciler.config.diagnostics import Diagnostic, Severity
from reconciler.config.dstack_fields import DSTACK_ONLY_TOP
from reconciler.config.parse import FileKind, parse_service_text

GOOD = """\
type: service
commands:
  - python3 -m http.server 8000
port: 8000
"""


def errors(text: str) -> list[Diagnostic]:
    return [
        d
        for d in parse_service_text(textwrap.dedent(text), "svc/.dstack.yml").diagnostics
        if d.severity == Severity.ERROR
    ]


def test_good_file() -> None:
    parsed = parse_service_text(GOOD, "a.dstack.yml")
    assert parsed.kind == FileKind.SERVICE and parsed.config is not None and parsed.diagnostics == []


@pytest.mark.parametrize(
    ("extra", "line", "column", "field", "needle"),
    [
        pytest.param("auth: maybe\n", 5, 7, "auth", "boolean", id="wrong-type"),
        pytest.param("replicas: many\n", 5, 11, "replicas", "whole number", id="replicas-word"),
        pytest.param("resources:\n  gpu: A100::2\n", 6, 8, "resources.gpu", "empty part", id="nested-value"),
        pytest.param(
            "env:\n  - A=1\n  - A=2\n", 7, 5, "env.1", "duplicate environment variable", id="env-item"
        ),
        pytest.param(
            "env:\n  ok: 1\n  bad: [1]\n", 7, 8, "env.bad", "string or a number", id="env-mapping-item"
        ),
        pytest.param(
            "scaling:\n  metric: rps\n  target: -1\n",
            7,
            11,
            "scaling.target",
            "greater than 0",
            id="scaling-target",
        ),
        pytest.param(
            "model:\n  name: m\n  format: openai\n  eos_token: x\n",
            8,
            14,
            "model.eos_token",
            "only for `format: tgi`",
            id="model-cross",
        ),
        pytest.param("comands: [x]\n", 5, 1, "comands", "did you mean 'commands'?", id="did-you-mean"),
        pytest.param(
            "resources:\n  memroy: 8GB\n",
            6,
            3,
            "resources.memroy",
            "did you mean 'memory'?",
            id="nested-did-you-mean",
        ),
        pytest.param(
            "scaling:\n  metrc: rps\n",
            6,
            3,
            "scaling.metrc",
            "did you mean 'metric'?",
            id="scaling-did-you-mean",
        ),
        pytest.param("port: 9000\n", 5, 1, "port", "duplicate key 'port'", id="duplicate-key"),
        pytest.param("name: Bad_Name\n", 5, 7, "name", "invalid name", id="bad-name"),
        pytest.param("image: x\npython: '3.11'\n", 6, 9, "python", "mutually exclusive", id="image-xor-python"),
        pytest.param(
            "replicas: 1..3\n", 5, 11, "replicas", "`scaling` is required", id="range-needs-scaling"
        ),
        pytest.param("xyzzy: 1\n", 5, 1, "xyzzy", "unknown key 'xyzzy'", id="unknown-no-suggestion"),
    ],
)
def test_error_positions(extra: str, line: int, column: int, field: str, needle: str) -> None:
    found = errors(GOOD + extra)
    assert found, "expected an error"
    match = [d for d in found if needle in d.message]
    assert match, [d.format() for d in found]
    d = match[0]
    assert (d.line, d.column, d.field) == (line, column, field), d.format()
    assert d.format().startswith(f"svc/.dstack.yml:{line}:{column}: ")


def test_missing_port_points_at_document() -> None:
    [d] = errors("type: service\ncommands: [x]\n")
    assert (d.line, d.field, d.message) == (1, "port", "required key `port` is missing")


def test_all_errors_at_once() -> None:
    found = errors(GOOD + "auth: 3\nreplicas: x\ncomands: []\nresources:\n  gpu: '::'\n")
    assert {d.field for d in found} == {"auth", "replicas", "comands", "resources.gpu"}


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        pytest.param("type: service\nport: [8000\n", 3, "YAML syntax error", id="unclosed-flow"),
        pytest.param("type: service\n  port: 8000\n", 2, "YAML syntax error", id="bad-indent"),
        pytest.param("a: 1\n---\nb: 2\n", 2, "YAML syntax error", id="two-documents"),
        pytest.param("", 1, "the file is empty", id="empty"),
        pytest.param("- type: service\n", 1, "expected a mapping", id="list-document"),
        pytest.param("port: 8000\ncommands: [x]\n", 1, "missing `type: service`", id="no-type"),
        pytest.param("type: servce\nport: 1\ncommands: [x]\n", 1, "did you mean 'service'?", id="type-typo"),
        pytest.param(
            "type: service\n1: x\nport: 1\ncommands: [x]\n", 1, "keys must be strings", id="int-key"
        ),
    ],
)
def test_file_level_errors(text: str, line: int, needle: str) -> None:
    parsed = parse_service_text(text, "x.dstack.yml")
    assert parsed.kind == FileKind.INVALID and parsed.config is None
    match = [d for d in parsed.diagnostics if needle in d.message]
    assert match and match[0].line == line, [d.format() for d in parsed.diagnostics]


@pytest.mark.parametrize("kind", ["task", "dev-environment", "fleet", "gateway", "volume"])
def test_other_types_are_skipped(kind: str) -> None:
    parsed = parse_service_text(f"type: {kind}\nname: x\n", "t.dstack.yml")
    assert parsed.kind == FileKind.SKIPPED
    [d] = parsed.diagnostics
    assert d.severity == Severity.INFO and kind in d.message and d.line == 1


@pytest.mark.parametrize("key", sorted(DSTACK_ONLY_TOP))
def test_dstack_only_fields_warn(key: str) -> None:
    parsed = parse_service_text(GOOD + f"{key}: null\n", "w.dstack.yml")
    assert parsed.kind == FileKind.SERVICE, [d.format() for d in parsed.diagnostics]
    [d] = parsed.diagnostics
    assert d.severity == Severity.WARNING and d.field == key and d.line == 5 and f"`{key}`" in d.message


def test_real_dstack_config_with_extras_validates() -> None:
    text = GOOD + textwrap.dedent(
        """\
        https: false
        gateway: false
        strip_prefix: false
        working_dir: /app
        privileged: false
        shell: bash
        probes:
          - type: http
            url: /health
        rate_limits:
          - prefix: /v1
            rps: 10
        volumes:
          - /data:/data
        registry_auth:
          username: u
          password: p
        resources:
          shm_size: 8GB
          gpu:
            name: A100
            compute_capability: 8.0
            total_memory: 80GB
        """
    )
    parsed = parse_service_text(text, "d.dstack.yml")
    assert parsed.config is not None, [d.format() for d in parsed.diagnostics]
    warned = {d.field for d in parsed.diagnostics if d.severity == Severity.WARNING}
    assert warned == {
        "https",
        "gateway",
        "strip_prefix",
        "working_dir",
        "privileged",
        "shell",
        "volumes",
        "registry_auth",
        "resources.shm_size",
        "resources.gpu.compute_capability",
        "resources.gpu.total_memory",
    }
    assert parsed.config.resources.gpu is not None and parsed.config.resources.gpu.name == ["A100"]
    # probes and rate_limits are acted on now (readiness, the routes snapshot)
    assert [p.url for p in parsed.config.probes] == ["/health"]
    assert [(r.prefix, r.rps) for r in parsed.config.rate_limits] == [("/v1", 10)]


def test_profile_values_fill_gaps_and_file_wins() -> None:
    parsed = parse_service_text(
        GOOD + "regions: [eu-west-1]\n", "p.dstack.yml", {"regions": ["us-east-1"], "spot_policy": "spot"}
    )
    assert parsed.config is not None
    assert parsed.config.regions == ["eu-west-1"] and parsed.config.spot_policy == "spot"


def test_name_is_kept_even_when_invalid() -> None:
    parsed = parse_service_text("type: service\nname: chat\nport: x\n", "c.dstack.yml")
    assert parsed.kind == FileKind.INVALID and parsed.name == "chat"


def test_input_is_not_mutated() -> None:
    text = GOOD + "resources:\n  shm_size: 1GB\n  cpu: 2..\n"
    first = parse_service_text(text, "m.dstack.yml")
    assert first.config is not None and first.config.resources.cpu.min == 2


def test_alias_bomb_is_refused_quickly() -> None:
    lines = ["type: service", "port: 8000", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]")
    lines.append("commands: *a8")
    parsed = parse_service_text("\n".join(lines) + "\n", "bomb.dstack.yml")
    assert parsed.kind == FileKind.INVALID
    assert "too many aliases" in parsed.diagnostics[0].message


def test_deep_nesting_does_not_raise() -> None:
    parsed = parse_service_text("type: service\nport: " + "[" * 5000 + "]" * 5000 + "\n", "deep.dstack.yml")
    assert parsed.kind == FileKind.INVALID
    assert [d.message for d in parsed.diagnostics] == ["the document is nested too deeply"]
