"""The CLI does what it says: `plan --repo .` plans the checked-out branch, a state directory
inside the config repository warns, `apply` reports every step it applied."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.helpers import kill_replicas, replica_processes
from tests.support.git_repo import commit, git

ROOT = Path(__file__).resolve().parents[2]
SERVICE = """\
type: service
name: {name}
commands:
  - python3 -m http.server 8000
port: 8000
auth: false
backends: [local]
"""


def tidegate(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler.cli.main", *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={"PATH": "/usr/bin:/bin", "HOME": str(cwd), "PYTHONPATH": str(ROOT)},
    )  # fmt: skip


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    commit(path, {"web.dstack.yml": SERVICE.format(name="web")})
    git(path, "checkout", "-q", "-b", "feature")
    commit(path, {"extra.dstack.yml": SERVICE.format(name="extra")}, "feature")
    return path


def test_plan_without_branch_plans_the_checked_out_branch(repo: Path, tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    out = tidegate(repo, "plan", "--repo", ".", "--state", state)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "+ extra: create" in out.stdout and "+ web: create" in out.stdout
    main = tidegate(repo, "plan", "--repo", ".", "--branch", "main", "--state", state)
    assert "+ web: create" in main.stdout and "extra" not in main.stdout


def test_a_state_dir_inside_the_config_repository_warns(repo: Path, tmp_path: Path) -> None:
    inside = tidegate(repo, "plan", "--repo", ".", "--state", "state")
    assert "warning: the state directory" in inside.stderr and "inside the config repository" in inside.stderr
    outside = tidegate(repo, "plan", "--repo", ".", "--state", str(tmp_path / "state"))
    assert "inside the config repository" not in outside.stderr


@pytest.mark.slow
def test_apply_reports_the_steps_it_applied(repo: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    out = tidegate(repo, "apply", "--repo", ".", "--state", str(state), "--wait", "60", timeout=180)
    try:
        assert out.returncode == 0, out.stdout + out.stderr
        # 2 services: create + add replica each, whatever number of passes the wait took
        assert ": 4 step(s) applied" in out.stdout, out.stdout
        assert "  + extra" in out.stdout and "  + web" in out.stdout
    finally:
        kill_replicas(state)  # `apply` leaves replicas running on purpose


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("validate", "--format", "json", "examples"), id="validate"),
        pytest.param(("schema",), id="schema"),
        pytest.param(("offers",), id="offers"),
        pytest.param(("ps", "--json", "--state", "{state}"), id="ps-json"),
    ],
)
def test_a_closed_pipe_ends_quietly(args: tuple[str, ...], tmp_path: Path) -> None:
    """`tidegate ps --json | head`: the reader is gone before tidegate writes; no traceback."""
    (tmp_path / "state").mkdir()  # `ps` refuses a state dir that does not exist
    argv = [a.format(state=tmp_path / "state") for a in args]
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler.cli.main", *argv],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the interpreter has even imported tidegate
    err = proc.stderr.read()
    code = proc.wait(60)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert code in (0, 141), (code, err)


def test_a_multi_line_reason_stays_on_one_table_row() -> None:
    import io

    from reconciler.cli.output import print_table

    out = io.StringIO()
    print_table(
        ["SERVICE", "STATUS", "REASON"], [["web", "stalled", "first line\nsecond line\n  third"]], stream=out
    )
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[1].split(None, 2)[2].strip() == "first line second line third"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(
            ["--gpu", "A100:x"], "error: --gpu 'A100:x': GPU spec 'A100:x' gives the name twice", id="bad-gpu"
        ),
        pytest.param(["--cpu", "lots"], "error: --cpu 'lots': ", id="bad-cpu"),
        pytest.param(
            ["--backend", "gcp"],
            "error: --backend 'gcp': unknown backend; offers come from aws, azure",
            id="gcp",
        ),
        pytest.param(
            ["--config", "{tmp}/missing.dstack.yml"],
            "error: --config {tmp}/missing.dstack.yml: no such file",
            id="missing",
        ),
    ],
)
def test_offers_errors_are_readable(
    args: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from reconciler.cli.main import main

    assert main(["offers", *(a.format(tmp=tmp_path) for a in args)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(expected.format(tmp=tmp_path)), err
    assert "Diagnostic(" not in err and "pydantic" not in err and "Traceback" not in err


def test_offers_config_reads_only_that_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from reconciler.cli.main import main

    gpu = SERVICE.format(name="gpu").replace("backends: [local]\n", "") + "resources:\n  gpu: 24GB\n"
    (tmp_path / "a.dstack.yml").write_text(gpu)
    (tmp_path / "b.dstack.yml").write_text(
        gpu
    )  # the same name: a conflict in the folder, not in a.dstack.yml
    (tmp_path / "broken.dstack.yml").write_text("type: service\nport: [\n")
    assert main(["offers", "--config", str(tmp_path / "a.dstack.yml"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and all("24GB" in r["resources"] or "GB)" in r["resources"] for r in rows)
    (tmp_path / "c.dstack.yml").write_text(SERVICE.format(name="cc") + "replicaz: 2\n")
    assert main(["offers", "--config", str(tmp_path / "c.dstack.yml")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: c.dstack.yml:8:1: replicaz: unknown key 'replicaz'"), err
    assert "Diagnostic(" not in err


def test_a_profile_region_does_not_block_a_local_service(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    profiles = (
        "profiles:\n  - name: p\n    default: true\n    regions: [us-east-1]\n    creation_policy: reuse\n"
    )
    commit(repo, {".dstack/profiles.yml": profiles, "web.dstack.yml": SERVICE.format(name="web")})
    out = tidegate(repo, "plan", "--repo", ".", "--state", str(tmp_path / "state"))
    assert out.returncode == 2, out.stdout + out.stderr
    assert "+ web: create" in out.stdout and "blocked" not in out.stdout
    warning = "  warning: .dstack/profiles.yml:5:5: profiles.0.creation_policy: `creation_policy` is accepted"
    assert warning in out.stdout and "error:" not in out.stdout


@pytest.mark.slow
def test_stop_without_up_stops_the_replicas_before_saying_so(repo: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    try:
        applied = tidegate(
            repo, "apply", "--repo", ".", "--branch", "main", "--state", str(state), "--wait", "60"
        )
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert replica_processes(state)
        out = tidegate(repo, "stop", "web", "--state", str(state))
        assert out.returncode == 0, out.stdout + out.stderr
        assert "web: stopped (no replica runs)" in out.stdout, out.stdout
        assert replica_processes(state) == []
        ps = json.loads(tidegate(repo, "ps", "--json", "--state", str(state)).stdout)
        assert {s["name"]: s["status"] for s in ps["services"]}["web"] == "stopped"
    finally:
        kill_replicas(state)


def test_ps_finds_the_running_gateway_address(tmp_path: Path) -> None:

    from reconciler.cli.settings import Settings, publish_gateway_address, running_gateway_listen

    assert running_gateway_listen(tmp_path) is None
    publish_gateway_address(Settings(state_dir=tmp_path, listen="127.0.0.1:18555"))
    assert running_gateway_listen(tmp_path) == "127.0.0.1:18555"  # this process is alive
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "gateway-address.json").write_text(json.dumps({"listen": "127.0.0.1:1", "pid": dead.pid}))
    assert running_gateway_listen(tmp_path) is None, "a gateway that is gone says nothing"


def test_a_bare_repository_still_defaults_to_main(tmp_path: Path) -> None:
    from reconciler.cli.settings import checked_out_branch

    bare = tmp_path / "bare.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "trunk", str(bare)], check=True)
    assert checked_out_branch(str(bare)) is None
    work = tmp_path / "work"
    work.mkdir()
    git(work, "init", "-q", "-b", "feature-x")
    assert checked_out_branch(str(work)) == "feature-x"
    assert checked_out_branch("https://example.com/x.git") is None
