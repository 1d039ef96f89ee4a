"""`tidegate plan` as the example workflow runs it, in a subprocess: a PR checkout planned against its
base branch checked out beside it (`git worktree add`), with a fresh state directory as in CI:

    tidegate plan --format markdown --repo . --watch --baseline "$RUNNER_TEMP/base" \
        --state "$RUNNER_TEMP/tidegate-state"

Exit codes 0 (no change) / 2 (changes) / 1 (config errors) drive the workflow, and `--json` stays an
alias of `--format json`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.render.plan_markdown import PLAN_COMMENT_MARKER
from tests.support.git_repo import commit, git

ROOT = Path(__file__).resolve().parents[2]
TIDEGATE = Path(sys.executable).parent / "tidegate"

WEB = """\
type: service
name: web
commands:
  - python3 -m http.server {port}
port: {port}
replicas: {replicas}
"""


def web(port: int = 8000, replicas: int = 1) -> str:
    return WEB.format(port=port, replicas=replicas)


@pytest.fixture
def pr_repo(tmp_path: Path) -> tuple[Path, Path]:
    """A config repo whose HEAD is the PR, with its base checked out beside it (as the workflow does)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    base_sha = commit(repo, {"web.dstack.yml": web(), "old.dstack.yml": web(9000).replace("name: web", "name: old")})
    git(repo, "worktree", "add", "-q", "--detach", str(tmp_path / "runner" / "base"), base_sha)
    return repo, tmp_path / "runner"


def plan(repo: Path, runner: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [str(TIDEGATE)] if TIDEGATE.exists() else [sys.executable, "-m", "reconciler.cli.main"]
    return subprocess.run(
        [*cmd, "plan", *extra, "--repo", ".", "--watch",
         "--baseline", str(runner / "base"), "--state", str(runner / "tidegate-state")],
        cwd=repo, capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(runner)},
    )


def test_markdown_against_the_base_branch(pr_repo: tuple[Path, Path]) -> None:
    repo, runner = pr_repo
    commit(repo, {
        "web.dstack.yml": web(8001, replicas=2),
        "old.dstack.yml": None,
        "api.dstack.yml": web().replace("name: web", "name: api"),
    }, "the PR")
    out = plan(repo, runner, "--format", "markdown")
    assert out.returncode == 2, out.stderr
    page = out.stdout
    assert page.startswith(PLAN_COMMENT_MARKER + "\n### tidegate plan")
    assert "| :sparkles: create | `api` | 1 |" in page
    assert "update | `web` | 1 → 2 |" in page
    assert "`old`" in page and "delete" in page
    assert "| port | 8000 | 8001 |" in page
    assert out.stderr == ""


@pytest.mark.slow
def test_no_change_and_formats(pr_repo: tuple[Path, Path]) -> None:
    repo, runner = pr_repo
    out = plan(repo, runner, "--format", "markdown")
    assert out.returncode == 0, out.stderr
    assert "**No changes.**" in out.stdout
    as_json = json.loads(plan(repo, runner, "--json").stdout)
    assert as_json == json.loads(plan(repo, runner, "--format", "json").stdout)
    assert as_json["changes"] is False and as_json["exit_code"] == 0
    text = plan(repo, runner)
    assert text.returncode == 0 and "No changes." in text.stdout


def test_config_errors_exit_1_and_are_listed(pr_repo: tuple[Path, Path]) -> None:
    repo, runner = pr_repo
    commit(repo, {"web.dstack.yml": web() + "replicaz: 2\n"}, "typo")
    out = plan(repo, runner, "--format", "markdown")
    assert out.returncode == 1, out.stderr
    assert ":x: Problems" in out.stdout and "`web`" in out.stdout


def test_missing_baseline_is_an_error(pr_repo: tuple[Path, Path], tmp_path: Path) -> None:
    repo, _ = pr_repo
    out = plan(repo, tmp_path / "nowhere", "--format", "markdown")
    assert out.returncode == 1
    assert "--baseline" in out.stderr and "not a directory" in out.stderr
