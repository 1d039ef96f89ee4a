"""A real `tidegate up` whose replica prints a bare-KEY secret from --env-file and crashes.

Decision tested here: the replica's own log (`replicas/<id>/logs/replica.log`, and the kept last
lines in `replicas/.logs/`) is the replica's output, not a tidegate document. It is kept raw on
disk — 0600 inside the 0700 state dir, readable by the operator who wrote the env file anyway —
and masked wherever tidegate shows it. Every other file under the state dir, and everything
`up`, `ps`, `ps --json`, `logs` and `plan` (text, JSON, markdown) print, holds no secret value.
"""

from __future__ import annotations

import json
import secrets
import stat
import textwrap
from pathlib import Path

import pytest

from tests.e2e.conftest import remote, tidegate  # noqa: F401 - the e2e fixtures, used here too
from tests.e2e.helpers import Remote, Tidegate, wait_for

pytestmark = pytest.mark.slow

LEAK = textwrap.dedent(
    """
    import os, sys
    print("starting with token", os.environ["API_TOKEN"], flush=True)
    print("debug flag is", os.environ["DEBUG_FLAG"], flush=True)
    sys.exit(3)
    """
)

SERVICE = textwrap.dedent(
    """\
    type: service
    name: leaky
    env:
      - API_TOKEN
      - DEBUG_FLAG
      - MODE=prod
    commands:
      - python3 leak.py
    port: 8000
    auth: true
    backends: [local]
    resources:
      cpu: 1..
      memory: 64MB..
      disk: 1GB..
    """
)


def _replica_output(rel: Path) -> bool:
    parts = rel.parts
    return parts[:1] == ("replicas",) and (parts[1:2] == (".logs",) or parts[2:3] == ("logs",))


def test_a_secret_a_replica_prints_reaches_no_tidegate_file_or_output(
    remote: Remote, tidegate: Tidegate, tmp_path: Path  # noqa: F811
) -> None:
    secret = f"tg-e2e-{secrets.token_hex(12)}"
    env_file = tmp_path / "secrets.env"
    env_file.write_text(f"API_TOKEN={secret}\nDEBUG_FLAG=true\n")
    remote.push({"leak.py": LEAK, "leaky.dstack.yml": SERVICE}, "a service that prints its secret")
    tidegate.up(remote.url, "--env-file", str(env_file), "--no-gateway")

    def crashed() -> dict[str, object] | None:
        svc = tidegate.ps().get("leaky")
        if svc and any(r["phase"] == "failed" and r["log_tail"] for r in svc["replicas"]):  # type: ignore[index]
            return svc
        return None

    svc = wait_for(crashed, timeout=90, what="the leaky replica to crash")
    # `ps` works (the DEBUG_FLAG=true value once corrupted state.json) and masks its output.
    assert svc["status"] == "degraded"
    rep = next(r for r in svc["replicas"] if r["log_tail"])  # type: ignore[union-attr]
    assert any("starting with token ***" in line for line in rep["log_tail"]), rep
    outputs = {"ps --json": json.dumps(svc)}

    def ps_text_with_tail() -> str | None:
        out = tidegate.run("ps")  # the replica restarts with backoff: catch it while failed
        return out.stdout + out.stderr if out.returncode == 0 and "last lines of" in out.stdout else None

    outputs["ps"] = wait_for(ps_text_with_tail, timeout=90, what="ps to show the crashed replica's last lines")
    assert "starting with token ***" in outputs["ps"], outputs["ps"]
    for label, argv in {
        "ps --json (later)": ("ps", "--json"),
        "logs": ("logs", "leaky"),  # no --env-file: uses the one `up` recorded (its path)
        "plan": ("plan", "--repo", remote.url, "--env-file", str(env_file)),
        "plan --format json": ("plan", "--repo", remote.url, "--env-file", str(env_file), "--format", "json"),
        "plan --format markdown": (
            "plan", "--repo", remote.url, "--env-file", str(env_file), "--format", "markdown",
        ),
    }.items():
        out = tidegate.run(*argv)
        assert out.returncode in (0, 2), (label, out.stderr)
        outputs[label] = out.stdout + out.stderr
    assert "starting with token ***" in outputs["logs"]
    assert "debug flag is ***" in outputs["logs"], "DEBUG_FLAG is a secret this replica received"
    tidegate.stop_all()
    outputs["up's own log"] = tidegate.log_text()
    for label, text in outputs.items():
        assert secret not in text, f"the secret leaked into {label}"

    state = tidegate.state
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    raw_logs = []
    for path in sorted(state.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        rel = path.relative_to(state)
        text = path.read_bytes().decode(errors="replace")
        if _replica_output(rel):
            raw_logs.append(rel)
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, f"{rel} holds raw replica output"
        else:
            assert secret not in text, f"the secret leaked into {rel}"
        if len(rel.parts) == 1:
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, f"{rel} is readable by others"
    assert any(secret in (state / rel).read_text(errors="replace") for rel in raw_logs), (
        "the replica's own log keeps what it printed (raw, 0600), so the check above means something"
    )
    doc = json.loads((state / "state.json").read_text())
    assert doc["services"]["leaky"]["route"]["auth"] is True
    replicas = doc["services"]["leaky"]["replicas"]
    assert replicas and set(replicas[0]["secrets"]) == {"API_TOKEN", "DEBUG_FLAG"}
