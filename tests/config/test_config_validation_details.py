"""Validation details from issue 14: problems point at their keys, templates compile, model names
are unique, GPU names are checked, github notices, and the schema accepts what validate accepts."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from backends.cloud.catalog import SHIPPED_CATALOG
from backends.gpu_names import is_known_gpu
from reconciler.cli.main import main
from reconciler.config.loader import Severity, load_tree
from reconciler.config.parse import parse_service_text

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BASE = "type: service\ncommands: [python3 -m http.server 8000]\nport: 8000\n"


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize(
    ("text", "field", "line", "message"),
    [
        pytest.param(
            "type: service\nimage: x\npython: '3.11'\ncommands: [a]\nport: 80\n",
            "python",
            3,
            "`image` and `python` are mutually exclusive",
            id="image-and-python-at-python",
        ),
        pytest.param(
            BASE + "model:\n  name: m\n  format: tgi\n  chat_template: '{% for x in %}'\n",
            "model.chat_template",
            7,
            "not a valid Jinja template",
            id="broken-chat-template",
        ),
        pytest.param(
            BASE + "model:\n  name: m\n  format: tgi\n  chat_template: '{{ messages[0'\n",
            "model.chat_template",
            7,
            "not a valid Jinja template",
            id="unclosed-expression",
        ),
    ],
)
def test_errors_point_at_the_key(text: str, field: str, line: int, message: str) -> None:
    parsed = parse_service_text(text, "s.dstack.yml")
    assert parsed.config is None
    errors = [d for d in parsed.diagnostics if d.severity == Severity.ERROR]
    assert [(d.field, d.line) for d in errors] == [(field, line)]
    assert message in errors[0].message


def test_a_valid_chat_template_passes() -> None:
    template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"
    parsed = parse_service_text(
        BASE + f"model:\n  name: m\n  format: tgi\n  chat_template: '{template}'\n", "s.dstack.yml"
    )
    assert parsed.config is not None and parsed.diagnostics == []


def test_duplicate_service_names_point_at_name_keys(tmp_path: Path) -> None:
    write(
        tmp_path, {"a/.dstack.yml": "# a\n" + BASE + "name: same\n", "b/.dstack.yml": "name: same\n" + BASE}
    )
    result = load_tree(tmp_path)
    where = {(d.path, d.line, d.column, d.field) for d in result.errors}
    assert where == {("a/.dstack.yml", 5, 1, "name"), ("b/.dstack.yml", 1, 1, "name")}
    assert result.services == {} and set(result.failed) == {"same"}


def test_two_services_mapping_one_model_are_both_errors(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "aa.dstack.yml": BASE + "model: llama\n",
            "bb.dstack.yml": BASE + "model:\n  format: openai\n  name: llama\n",
            "cc.dstack.yml": BASE + "model: other\n",
        },
    )
    result = load_tree(tmp_path)
    assert set(result.services) == {"cc"} and set(result.failed) == {"aa", "bb"}
    shown = sorted((d.path, d.line, d.field, d.message) for d in result.errors)
    assert shown == [
        ("aa.dstack.yml", 4, "model.name", "model name 'llama' is also mapped by bb (bb.dstack.yml)"),
        ("bb.dstack.yml", 6, "model.name", "model name 'llama' is also mapped by aa (aa.dstack.yml)"),
    ]


@pytest.mark.parametrize(
    ("gpu", "warned"),
    [
        pytest.param('"lots"', True, id="lots"),
        pytest.param("H10O", True, id="typo"),
        pytest.param("H100", False, id="h100"),
        pytest.param("a10g:24GB", False, id="lowercase-with-memory"),
        pytest.param("A100,H100:80GB:2", False, id="two-names"),
        pytest.param("24GB..80GB", False, id="memory-only"),
        pytest.param("MI300X", False, id="amd"),
        pytest.param("tpu-v5e-8", False, id="tpu"),
    ],
)
def test_unknown_gpu_names_warn(gpu: str, warned: bool) -> None:
    parsed = parse_service_text(BASE + f"resources:\n  gpu: {gpu}\n", "s.dstack.yml")
    assert parsed.config is not None  # a warning never fails the service
    warnings = [d for d in parsed.diagnostics if d.severity == Severity.WARNING]
    assert bool(warnings) is warned
    if warned:
        assert warnings[0].field == "resources.gpu" and warnings[0].line == 5
        assert "unknown GPU name" in warnings[0].message


def test_every_catalog_gpu_is_known() -> None:
    with SHIPPED_CATALOG.open() as f:
        names = {row["gpu_name"] for row in csv.DictReader(f) if row["gpu_name"]}
    assert names and [n for n in names if not is_known_gpu(n)] == []


def test_github_format_emits_info_as_notice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path, {"s.dstack.yml": BASE, "t.dstack.yml": "type: task\ncommands: [a]\n"})
    monkeypatch.chdir(tmp_path)
    assert main(["validate", "--format", "github", "."]) == 0
    out = capsys.readouterr().out
    assert "::notice file=t.dstack.yml,line=1,col=7,title=tidegate%3A type::skipped: `type: task`" in out


def _schema(capsys: pytest.CaptureFixture[str]) -> object:
    jsonschema = pytest.importorskip("jsonschema")
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    return jsonschema.Draft202012Validator(schema)


# Files validate accepts in a form an editor sees differently from the examples
ACCEPTED_VARIANTS = [
    pytest.param("python: 3.11\n", id="python-unquoted-3.11"),
    pytest.param("python: 3.10\n", id="python-unquoted-3.10-reads-3.1"),
    pytest.param("python: '3.12'\n", id="python-quoted"),
    pytest.param("env:\n  A: 1\n  B: true\n", id="env-dict-scalars"),
    pytest.param("replicas: 0..2\nscaling: {metric: rps, target: 1}\n", id="replicas-range"),
    pytest.param("max_duration: off\n", id="max-duration-off"),
    pytest.param("retry: true\n", id="retry-true"),
]


@pytest.mark.parametrize("extra", ACCEPTED_VARIANTS)
def test_schema_accepts_what_validate_accepts(extra: str, capsys: pytest.CaptureFixture[str]) -> None:
    validator = _schema(capsys)
    text = BASE + extra
    parsed = parse_service_text(text, "s.dstack.yml")
    assert parsed.config is not None, parsed.diagnostics
    errors = [e.message for e in validator.iter_errors(yaml.safe_load(text))]  # type: ignore[attr-defined]
    assert errors == []


def test_schema_accepts_every_example_config(capsys: pytest.CaptureFixture[str]) -> None:
    validator = _schema(capsys)
    paths = sorted(EXAMPLES.rglob("*.dstack.yml")) + sorted(EXAMPLES.rglob(".dstack.yml"))
    assert paths
    for path in paths:
        data = yaml.safe_load(path.read_text())
        if not isinstance(data, dict) or data.get("type") != "service":
            continue
        assert load_tree(path.parent, path.name).services, path
        errors = [e.message for e in validator.iter_errors(data)]  # type: ignore[attr-defined]
        assert errors == [], (path, errors)
