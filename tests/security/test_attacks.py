"""Every attack of issue 12 against a real `tidegate up` with previews, real replicas in the sandbox.

One deployment per module (a bare remote, `tidegate up --previews` on the local backend): `victim`
(auth: true, declares the bare `HF_TOKEN`), `attacker` (declares `HF_TOKEN` too: the main branch is
trusted) and PR #1's preview of it, `attacker-pr-1` (known from its ref only: unverified, so its
secrets are withheld). The reconciler runs with the operator's secrets in its own environment. The
attacker's code (`attacker.APP`) dumps its environment and probes its sandbox from the inside;
the tests read the answers through the gateway and check the host's side too.

Before this issue (for the record; see SECURITY.md): the replica env was the reconciler's whole
environment, replicas ran as root seeing every process and the state directory, the egress proxy
connected anywhere, and a file in `<state>/signals/` could claim a PR was same-repo.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from backends.local import sandbox as local_sandbox
from backends.local.proc import MARK_REPLICA
from reconciler.previews.pr_source import read_decision
from tests.e2e.helpers import Remote, Tidegate, free_port, kill_replicas, replica_processes, wait_for
from tests.security.attacker import APP
from tests.support.git_repo import bare_remote, open_pr
from tidegate.signals import SIGNALS_DIR, send_signal

pytestmark = pytest.mark.slow

SECRETS = {
    "GITHUB_TOKEN": "ghp_security_test_0001",
    "AWS_SECRET_ACCESS_KEY": "aws_security_test_0002",
    "TIDEGATE_WEBHOOK_SECRET": "whsec_security_test_0003",
    "HF_TOKEN": "hf_security_test_0004",
}
REPO = {"full_name": "acme/configs", "fork": False}
# What bash itself adds to the environment of the command it runs.
SHELL_NAMES = {"PWD", "SHLVL", "_", "OLDPWD"}
ALLOWED_NAMES = {
    "PATH", "HOME", "TMPDIR", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy",
    "no_proxy", "TIDEGATE_REPLICA", "TIDEGATE_REPLICA_DIR", "TIDEGATE_OWNER", "LANG", "LANGUAGE", "TZ",
    "TIDEGATE_PREVIEW_PR", "TIDEGATE_PREVIEW_SHA",
}  # fmt: skip


def service(name: str, *, auth: bool, declared: str) -> str:
    return textwrap.dedent(
        f"""\
        type: service
        name: {name}
        env:
          - HF_TOKEN
          - DECLARED={declared}
        commands:
          - python3 app.py 8000
        port: 8000
        auth: {str(auth).lower()}
        backends: [local]
        resources:
          cpu: 1..
          memory: 64MB..
          disk: 1GB..
        """
    )


@dataclass
class Deployment:
    tg: Tidegate
    remote: Remote
    pr_sha: str

    @property
    def state(self) -> Path:
        return self.tg.state

    def get(self, name: str, path: str) -> dict[str, Any]:
        r = self.tg.get(name, path, timeout=15)
        assert r.status_code == 200, (name, path, r.status_code, r.text[:300])
        data: dict[str, Any] = r.json()
        return data

    def probe(self, name: str) -> dict[str, Any]:
        victim = next(p for p in (self.state / "replicas").iterdir() if p.name.startswith("victim-"))
        return self.get(name, f"/probe?state={self.state}&gateway={self.tg.port}&victim={victim}")

    def preview(self) -> dict[str, Any]:
        return next(p for p in read_decision(self.state)["previews"] if p["name"] == "attacker-pr-1")


def answers(tg: Tidegate, name: str) -> bool:
    try:
        return tg.get(name, "/", timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    problem = local_sandbox.probe(local_sandbox.find_tools())
    if problem is not None:
        pytest.skip(f"no replica sandbox on this machine: {problem}")
    tmp = tmp_path_factory.mktemp("security")
    remote = Remote(*bare_remote(tmp))
    remote.push(
        {
            "app.py": APP,
            "victim.dstack.yml": service("victim", auth=True, declared="victim"),
            "attacker.dstack.yml": service("attacker", auth=False, declared="main"),
        },
        "services",
    )
    pr_sha = open_pr(remote.work, 1, {"attacker.dstack.yml": service("attacker", auth=False, declared="pr")})
    (tmp / "logs").mkdir()
    tg = Tidegate(tmp / "state", free_port(), tmp / "logs")
    try:
        tg.up(remote.url, "--previews", env=SECRETS)
        try:
            for name in ("attacker", "attacker-pr-1"):
                wait_for(lambda n=name: answers(tg, n), timeout=120, what=f"{name} answers")
            wait_for(lambda: (tg.ps().get("victim") or {}).get("ready") == 1, timeout=60, what="victim ready")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{tg.log_text()[-4000:]}") from e
        yield Deployment(tg, remote, pr_sha)
    finally:
        tg.stop_all()
        kill_replicas(tg.state)
        assert not replica_processes(tg.state)


def secret_values_in(env: dict[str, str]) -> list[str]:
    text = json.dumps(env)
    return [name for name, value in SECRETS.items() if value in text]


def test_env_dump_main_branch_service(deployment: Deployment) -> None:
    """Before: the reconciler's whole environment. After: the allowlist plus what it declared."""
    env = deployment.get("attacker", "/env")
    assert env["HF_TOKEN"] == SECRETS["HF_TOKEN"] and env["DECLARED"] == "main"  # declared: given
    assert secret_values_in({k: v for k, v in env.items() if k != "HF_TOKEN"}) == []
    assert set(env) - ALLOWED_NAMES - SHELL_NAMES == {"HF_TOKEN", "DECLARED"}


def test_env_dump_preview(deployment: Deployment) -> None:
    """The preview declares HF_TOKEN too; unverified PR: withheld, and nothing else leaks."""
    env = deployment.get("attacker-pr-1", "/env")
    assert secret_values_in(env) == []
    assert "HF_TOKEN" not in env and env["DECLARED"] == "pr" and env["TIDEGATE_PREVIEW_PR"] == "1"
    assert set(env) - ALLOWED_NAMES - SHELL_NAMES == {"DECLARED"}
    assert deployment.preview()["withheld_env"] == ["HF_TOKEN"]


@pytest.mark.parametrize("name", ["attacker", "attacker-pr-1"])
def test_replica_runs_as_its_own_non_root_uid(deployment: Deployment, name: str) -> None:
    """Before: uid 0. After: the service's uid inside, and the same real uid seen from the host."""
    seen = deployment.probe(name)
    uid = local_sandbox.replica_uid(name)
    assert (seen["uid"], seen["euid"], seen["gid"], seen["groups"]) == (uid, uid, uid, [])
    host_view = [
        p.uids().real
        for p in replica_processes(deployment.state)
        if p.environ().get(MARK_REPLICA, "").rsplit("-", 2)[0] == name and "app.py" in " ".join(p.cmdline())
    ]
    assert host_view and set(host_view) == {uid}


@pytest.mark.parametrize("name", ["attacker", "attacker-pr-1"])
def test_other_processes_are_invisible(deployment: Deployment, name: str) -> None:
    """Before: every process of the machine, other replicas' /proc/*/environ readable. After: its own
    PID namespace: a handful of its own processes, no reconciler, no relay, no other replica."""
    seen = deployment.probe(name)
    assert seen["foreign_environs"] == []
    assert len(seen["pids"]) < 10, seen["cmdlines"]
    joined = "\n".join(seen["cmdlines"])
    for other in ("reconciler.cli", "relay.py", "victim", "uvicorn"):
        assert other not in joined, seen["cmdlines"]
    # What is there: the sandbox's own init (bwrap), the run script's bash and the app.
    assert all(("bwrap" in c) or ("run.sh" in c) or ("app.py" in c) for c in seen["cmdlines"]), seen["cmdlines"]


@pytest.mark.parametrize("name", ["attacker", "attacker-pr-1"])
def test_state_directory_is_absent(deployment: Deployment, name: str) -> None:
    """Before: tokens.json, the journal and signals/ readable and writable by the replica. After: the
    state directory does not exist in its mount namespace; only its own dirs are writable."""
    seen = deployment.probe(name)
    for key in ("read_tokens", "read_state", "read_journal", "list_victim", "write_signal"):
        assert seen[key].startswith("FileNotFoundError"), (key, seen[key])
    # The path itself exists only as the empty skeleton leading to the replica's own mounts.
    assert seen["list_state"] == "ok ['replicas']", seen["list_state"]
    assert not (deployment.state / SIGNALS_DIR / "forged.json").exists()
    for key in ("write_home", "write_tmp", "write_work"):
        assert seen[key] == "ok written", (key, seen[key])
    for key in ("write_usr", "write_etc"):
        assert seen[key].startswith("OSError: [Errno 30]"), (key, seen[key])  # read-only file system
    assert seen["read_shadow"].startswith("PermissionError") and seen["list_root"].startswith(("FileNotFound", "Permission"))


@pytest.mark.parametrize("name", ["attacker", "attacker-pr-1"])
def test_gateway_and_neighbour_unreachable(deployment: Deployment, name: str) -> None:
    """Before: the proxy connected anywhere (the gateway, an auth:true neighbour through it).
    After: its own network namespace (nothing of the host on its loopback, no neighbour socket in
    its mount namespace) and a proxy that refuses loopback by name, v4, v6 and v4-mapped."""
    seen = deployment.probe(name)
    assert seen["gateway_direct"].startswith("ConnectionRefusedError"), seen["gateway_direct"]
    assert seen["victim_socket"].startswith("FileNotFoundError"), seen["victim_socket"]
    for key in ("gateway_connect", "gateway_get", "gateway_by_name", "gateway_v4_mapped", "gateway_v6"):
        assert seen[key] == "ok HTTP/1.1 403 Forbidden", (key, seen[key])


def test_signals_folder_is_private(deployment: Deployment) -> None:
    assert (deployment.state / SIGNALS_DIR).stat().st_mode & 0o777 == 0o700


def signed_webhook(d: Deployment, payload: dict[str, Any]) -> httpx.Response:
    body = json.dumps(payload).encode()
    signature = "sha256=" + hmac.new(SECRETS["TIDEGATE_WEBHOOK_SECRET"].encode(), body, hashlib.sha256).hexdigest()
    headers = {"Content-Type": "application/json", "X-GitHub-Event": "pull_request", "X-Hub-Signature-256": signature}
    return httpx.post(f"http://127.0.0.1:{d.tg.port}/hooks/github", content=body, headers=headers, timeout=10)


def same_repo_pr(sha: str) -> dict[str, Any]:
    return {
        "number": 1, "state": "open", "merged": False, "title": "PR 1", "labels": [],
        "html_url": "https://github.com/acme/configs/pull/1", "updated_at": "2026-01-01T00:00:00Z",
        "head": {"ref": "pr-1", "sha": sha, "repo": REPO},
        "base": {"ref": "main", "sha": "0" * 40, "repo": REPO},
    }  # fmt: skip


def test_forged_signal_does_not_lift_secrets_withheld(deployment: Deployment) -> None:
    """Before: a wake file claiming a same-repo PR made the preview trusted (secrets within 15 s).
    After: the file wakes the loop and nothing else. Control: the same claim in a webhook signed
    with the secret does lift it, so the check is not vacuous. Runs last: it changes the preview."""
    d = deployment
    assert d.preview()["withheld_env"] == ["HF_TOKEN"]
    forged = send_signal(
        d.state, "wake", {"source": "github", "event": "pull_request", "pr": 1, "pull_request": same_repo_pr(d.pr_sha)}
    )
    wait_for(lambda: not forged.exists(), timeout=30, what="the forged signal is drained")
    drained_at = time.time()
    # Three decisions after the drain: the claim had every chance to take effect.
    for _ in range(3):
        seen = read_decision(d.state)["at"] or 0.0
        wait_for(lambda s=seen: (read_decision(d.state)["at"] or 0.0) > max(s, drained_at), timeout=30, what="a new pass")
    assert d.preview()["withheld_env"] == ["HF_TOKEN"]
    assert "HF_TOKEN" not in d.get("attacker-pr-1", "/env")

    assert signed_webhook(d, {"action": "synchronize", "number": 1, "pull_request": same_repo_pr(d.pr_sha), "repository": REPO}).status_code == 202
    wait_for(lambda: d.preview()["withheld_env"] == [], timeout=30, what="the verified webhook lifts it")
    wait_for(
        lambda: d.get("attacker-pr-1", "/env").get("HF_TOKEN") == SECRETS["HF_TOKEN"],
        timeout=90, what="the preview rolls with the secret",
    )  # fmt: skip
