"""Plans show every change of what runs or what is routed (auth, model, probes, rate limits,
profile-derived placement), in text, JSON and markdown; a pull request's plan prices a cloud service
from the offline catalog and treats missing secrets as warnings; exit 1 never says "No changes"."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.git_repo import commit, git

TIDEGATE = Path(sys.executable).parent / "tidegate"

WEB = """\
type: service
name: web
commands:
  - python3 -m http.server 8000
port: 8000
"""
TGI = """\
type: service
name: tgi
image: ghcr.io/huggingface/text-generation-inference:latest
env: [HF_TOKEN, MODEL_ID=mistralai/Mistral-7B-Instruct-v0.1]
commands: [text-generation-launcher --port 8000]
port: 8000
resources:
  gpu: 24GB
model:
  format: tgi
  name: mistral
"""


@pytest.fixture
def pr_repo(tmp_path: Path) -> tuple[Path, Path]:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    base_sha = commit(repo, {"web.dstack.yml": WEB + "auth: true\n"})
    git(repo, "worktree", "add", "-q", "--detach", str(tmp_path / "runner" / "base"), base_sha)
    return repo, tmp_path / "runner"


def plan(repo: Path, runner: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [str(TIDEGATE)] if TIDEGATE.exists() else [sys.executable, "-m", "reconciler.cli.main"]
    return subprocess.run(
        [*cmd, "plan", *extra, "--repo", ".", "--watch",
         "--baseline", str(runner / "base"), "--state", str(runner / "tidegate-state")],
        cwd=repo, capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(runner)},
    )  # fmt: skip


@pytest.mark.slow  # eight `plan` runs per case, each a real git repo and three CLI formats
@pytest.mark.parametrize(
    ("change", "field", "old", "new"),
    [
        pytest.param("auth: false\n", "auth", True, False, id="auth-off"),
        pytest.param("auth: true\nmodel: llama\n", "model", None, "llama (prefix /v1)", id="model-mapping"),
        pytest.param(
            "auth: true\nprobes:\n  - url: /health\n",
            "probes",
            None,
            [
                {
                    "body": None,
                    "headers": [],
                    "interval": 15,
                    "method": "get",
                    "ready_after": 1,
                    "timeout": 10,
                    "type": "http",
                    "url": "/health",
                }
            ],
            id="probes",
        ),
        pytest.param(
            "auth: true\nrate_limits:\n  - rps: 2\n",
            "rate_limits",
            None,
            [{"burst": 0, "key": {"header": None, "type": "ip_address"}, "prefix": "/", "rps": 2.0}],
            id="rate-limits",
        ),
        pytest.param("auth: true\nmax_price: 1.5\n", "max_price", None, 1.5, id="max-price"),
        pytest.param("auth: true\nspot_policy: auto\n", "spot_policy", None, "auto", id="spot-policy"),
    ],
)
def test_routing_changes_are_shown_in_every_format(
    pr_repo: tuple[Path, Path], change: str, field: str, old: object, new: object
) -> None:
    repo, runner = pr_repo
    commit(repo, {"web.dstack.yml": WEB + change}, "change")
    text = plan(repo, runner)
    assert text.returncode == 2, text.stdout + text.stderr
    assert "No changes" not in text.stdout and f"      {field}: " in text.stdout
    doc = json.loads(plan(repo, runner, "--json").stdout)
    fields = {f["field"]: (f["old"], f["new"]) for f in doc["services"]["web"]["fields"]}
    assert fields[field] == (old, new) and doc["changes"] is True
    page = plan(repo, runner, "--format", "markdown").stdout
    assert "update | `web`" in page and f"`{field}`" in page


def test_a_pull_request_plan_prices_a_gpu_service_and_warns_on_secrets(pr_repo: tuple[Path, Path]) -> None:
    repo, runner = pr_repo
    commit(repo, {"tgi.dstack.yml": TGI}, "add a GPU service")
    out = plan(repo, runner, "--format", "markdown")
    assert out.returncode == 2, out.stdout + out.stderr
    page = out.stdout
    assert "| :sparkles: create | `tgi` | 1 | $" in page and "/h per replica (aws " in page
    assert ":x: Problems" not in page and ":warning: Warnings" in page
    assert "HF_TOKEN has no value" in page and "priced from the offline catalog" in page
    doc = json.loads(plan(repo, runner, "--json").stdout)
    offer = doc["services"]["tgi"]["offer"]
    assert offer["backend"] == "aws" and isinstance(offer["price_per_hour"], float)
    assert "tgi" in doc["warnings"] and doc["blocked"] == {}


def test_plan_json_is_typed_and_diagnostics_are_structured(pr_repo: tuple[Path, Path]) -> None:
    repo, runner = pr_repo
    commit(
        repo,
        {"web.dstack.yml": WEB + "auth: true\nreplicas: 1..3\nscaling: {metric: rps, target: 2}\n",
         "bad.dstack.yml": WEB.replace("name: web", "name: bad") + "replicaz: 2\n"},
        "typed",
    )  # fmt: skip
    out = plan(repo, runner, "--json")
    assert out.returncode == 1
    doc = json.loads(out.stdout)
    fields = {f["field"]: f["new"] for f in doc["services"]["web"]["fields"]}
    assert fields["replicas"] == {"min": 1, "max": 3}
    (diag,) = [d for d in doc["diagnostics"] if d["file"] == "bad.dstack.yml"]
    assert (diag["line"], diag["column"], diag["field"], diag["severity"]) == (6, 1, "replicaz", "error")
    assert "unknown key 'replicaz'" in diag["message"]
    assert doc["failed"]["bad"]["file"] == "bad.dstack.yml"
    assert any("replicaz" in r for r in doc["failed"]["bad"]["reasons"])


def test_a_plan_that_exits_1_never_says_no_changes(pr_repo: tuple[Path, Path]) -> None:
    repo, runner = pr_repo
    commit(repo, {"web.dstack.yml": WEB + "auth: true\nreplicaz: 2\n"}, "typo only")
    text = plan(repo, runner)
    assert text.returncode == 1 and "No changes" not in text.stdout
    page = plan(repo, runner, "--format", "markdown").stdout
    assert "No changes" not in page and "Nothing can be applied yet" in page
