"""`tidegate validate` / `tidegate schema`: exit codes, the three formats, the examples, the schema."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.cli.main import main
from reconciler.config.loader import load_tree

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
GOOD = "type: service\ncommands: [python3 -m http.server 8000]\nport: 8000\n"
BROKEN = "type: service\ncommands: [x]\nport: 8000\nauth: maybe\n"  # wrong type on line 4


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "good").mkdir()
    (tmp_path / "good/.dstack.yml").write_text(GOOD + "probes: []\n")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad/.dstack.yml").write_text(BROKEN)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_example_validates() -> None:
    result = load_tree(EXAMPLES)
    assert result.ok, [d.format() for d in result.diagnostics]
    assert [d for d in result.diagnostics if d.severity == "warning"] == []
    expected = {
        "tgi-mistral",
        "tgi-llama2-gptq",
        "vllm-llama2",
        "local-chat",
        "local-tgi",
        "local-autoscale",
        "smollm2",
    }
    assert expected <= set(result.services)
    gptq = result.services["tgi-llama2-gptq"].config.model
    assert (
        gptq is not None
        and gptq.eos_token == "</s>"
        and gptq.chat_template
        and "<<SYS>>\\n" in gptq.chat_template
    )
    vllm = result.services["vllm-llama2"].config
    assert (vllm.replicas.min, vllm.replicas.max) == (1, 4) and vllm.scaling is not None
    local = [s for s in result.services.values() if s.name.startswith("local-")]
    assert all(s.config.backends == ["local"] for s in local)
    assert {s.config.auth for s in local} == {True, False}


def test_valid_tree_exits_zero(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "good"]) == 0
    out = capsys.readouterr().out
    assert (
        "good/.dstack.yml:4:1: warning: probes:" in out and "1 valid service, 0 error(s), 1 warning(s)" in out
    )


def test_broken_file_reports_its_line_and_exits_one(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "bad/.dstack.yml"]) == 1
    out = capsys.readouterr().out
    assert "bad/.dstack.yml:4:7: error: auth: Input should be a valid boolean" in out
    assert "     4 | auth: maybe\n       |       ^" in out


def test_default_path_is_current_directory(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate"]) == 1
    out = capsys.readouterr().out
    assert "bad/.dstack.yml:4:7" in out and "good/.dstack.yml:4:1" in out


def test_usage_errors_exit_two(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "missing-dir"]) == 2
    assert "missing-dir: no such file or directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "--format", "xml"])
    assert exit_info.value.code == 2


def test_json_format(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--format", "json", "."]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["services"] == ["good"] and report["failed"] == ["bad"]
    [error] = [d for d in report["diagnostics"] if d["severity"] == "error"]
    assert error == {
        "path": "bad/.dstack.yml",
        "line": 4,
        "column": 7,
        "field": "auth",
        "message": "Input should be a valid boolean, unable to interpret input (got 'maybe')",
        "severity": "error",
    }


def test_github_format(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tree / "bad/.dstack.yml").write_text(BROKEN + "comands: [y]\n")
    assert main(["validate", "--format", "github"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert (
        "::error file=bad/.dstack.yml,line=4,col=7,title=tidegate%3A auth::Input should be a valid boolean, unable to interpret input (got 'maybe')"
        in lines
    )
    assert (
        "::error file=bad/.dstack.yml,line=5,col=1,title=tidegate%3A comands::unknown key 'comands'; did you mean 'commands'?"
        in lines
    )
    assert any(line.startswith("::warning file=good/.dstack.yml,line=4,col=1,") for line in lines)


def test_github_escapes_newlines_and_percent() -> None:
    from reconciler.cli.validate_cmd import github_annotation
    from reconciler.config.diagnostics import Diagnostic

    text = github_annotation("a,b:c.yml", Diagnostic("x", 2, 3, "f", "50%\nnext"))
    assert text == "::error file=a%2Cb%3Ac.yml,line=2,col=3,title=tidegate%3A f::50%25%0Anext"


def test_schema_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    props = schema["properties"]
    for key in (
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
        "backends",
        "regions",
        "instance_types",
        "spot_policy",
        "max_price",
        "retry",
        "max_duration",
        "probes",
        "https",
    ):
        assert key in props, key
    assert schema["required"] == ["type", "port"] and schema["additionalProperties"] is False
    assert {"type": "string", "pattern": r"^(\d+|\*):\d+$"} in props["port"]["anyOf"]


def test_schema_accepts_the_examples(capsys: pytest.CaptureFixture[str]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    import yaml

    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    validator = jsonschema.Draft202012Validator(schema)
    validator.check_schema(schema)
    for path in sorted(EXAMPLES.rglob("*.dstack.yml")):
        errors = list(validator.iter_errors(yaml.safe_load(path.read_text())))
        assert errors == [], (path, [e.message for e in errors])
    assert list(validator.iter_errors({"type": "service", "port": 1, "comands": []}))
    dstack_extras = {
        "type": "service",
        "image": "x",
        "port": "8080:8000",
        "https": False,
        "probes": [{"type": "http"}],
        "resources": {
            "shm_size": "8GB",
            "gpu": {"name": "A100", "compute_capability": 8.0},
            "disk": {"size": "1TB"},
        },
        "replicas": "0..2",
        "scaling": {"metric": "rps", "target": 1, "scale_up_delay": "1m"},
        "retry": True,
        "model": {"name": "m", "format": "tgi", "eos_token": "</s>"},
        "max_duration": "off",
        "env": {"A": 1},
    }
    assert list(validator.iter_errors(dstack_extras)) == []


def test_console_script_on_examples() -> None:
    exe = Path(sys.executable).with_name("tidegate")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "reconciler.cli.main"]
    proc = subprocess.run(
        [*command, "validate", "examples/"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 error(s)" in proc.stdout
