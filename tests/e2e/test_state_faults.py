"""State faults against a real `tidegate up` (local backend) with a client going through its
gateway the whole time: an unreadable state.json during a roll, routes.json deleted, a full disk
(a real tmpfs), a broken tokens.json, read-only commands beside a running `up`, a symlink leading
out of the config repo, and the litter housekeeping collects.

Each case checks the three things a user sees: what runs (replica process trees), what clients
get (every request answered), and what they are told (`ps`, one log line, no traceback).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.helpers import Remote, Tidegate, replica_trees, service_yaml, wait_for

pytestmark = pytest.mark.slow


class Client(threading.Thread):
    """GETs a service through the gateway in a loop and records every outcome."""

    def __init__(self, tg: Tidegate, service: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{tg.port}/services/{service}/"
        self.headers = headers or {}
        self.stop = threading.Event()
        self.greetings: list[str] = []
        self.failures: list[str] = []

    def run(self) -> None:
        with httpx.Client(timeout=10, headers=self.headers) as client:
            while not self.stop.is_set():
                try:
                    r = client.get(self.url)
                    if r.status_code == 200:
                        self.greetings.append(r.json()["greeting"])
                    else:
                        self.failures.append(f"{r.status_code} {r.text[:200]}")
                except httpx.HTTPError as e:
                    self.failures.append(repr(e))
                time.sleep(0.02)

    def __enter__(self) -> Client:
        self.start()
        wait_for(lambda: len(self.greetings) > 5, 30, "client traffic")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join(15)

    def served_more(self, n: int = 5) -> None:
        seen = len(self.greetings)
        wait_for(lambda: len(self.greetings) > seen + n, 30, "more traffic")


def ps_json(tg: Tidegate) -> tuple[int, dict[str, Any]]:
    out = tg.run("ps", "--json")
    assert "Traceback" not in out.stderr, out.stderr
    return out.returncode, json.loads(out.stdout)


def ready_at(tg: Tidegate, name: str, revision: str, count: int = 1) -> bool:
    out = tg.run("ps", "--json")
    if not out.stdout.strip():
        return False
    s = {x["name"]: x for x in json.loads(out.stdout)["services"]}.get(name)
    return bool(
        s and s["revision"] == revision and s["ready"] == count
        and all(r["phase"] == "ready" and r["current"] for r in s["replicas"])
    )


def deploy(remote: Remote, tg: Tidegate, greeting: str = "v1", *args: str, auth: bool = False) -> tuple[subprocess.Popen[bytes], str]:
    text = service_yaml("web", 1, greeting)
    rev = remote.push({"web.dstack.yml": text.replace("auth: false", "auth: true") if auth else text}, greeting)
    up = tg.up(remote.url, *args)
    wait_for(lambda: ready_at(tg, "web", rev), 90, "first deploy")
    return up, rev


def test_unreadable_state_holds_a_roll_keeps_serving_and_restore_resumes(remote: Remote, tidegate: Tidegate) -> None:
    tg = tidegate
    up, _ = deploy(remote, tg)
    running = set(replica_trees(tg.state))
    with Client(tg, "web") as client:
        (tg.state / "state.json").write_text("{not json")
        rev2 = remote.push({"web.dstack.yml": service_yaml("web", 1, "v2")}, "v2")
        wait_for(lambda: "taking no action" in tg.log_text(), 30, "the hold in the log")
        time.sleep(4)  # several passes (--interval 1) with the push waiting
        assert set(replica_trees(tg.state)) == running, "no create, no delete while state.json is unreadable"
        client.served_more()
        assert set(client.greetings) == {"v1"}
        code, body = ps_json(tg)
        assert code == 1
        problem = " ".join(body["problems"])
        assert str(tg.state / "state.json") in problem and f"tidegate state restore --state {tg.state}" in problem
        assert "takes no action" in problem

        restore = tg.run("state", "restore", "--yes")
        assert restore.returncode == 0, restore.stderr
        assert "from " + str(tg.state / "state.json.backup") in restore.stdout
        wait_for(lambda: ready_at(tg, "web", rev2), 90, "the roll after the restore")
        client.served_more()
    assert client.failures == [], client.failures[:5]
    assert client.greetings[-1] == "v2"
    log = tg.log_text()
    assert log.count("taking no action") == 1 and "resuming" in log and "Traceback" not in log

    # `up` started on a corrupt file: which file, why, and the command; then it starts after it.
    up.send_signal(signal.SIGTERM)
    assert up.wait(30) == 0
    (tg.state / "state.json").write_text('{"schema_version": 1, "ser')
    again = tg.up(remote.url)
    assert again.wait(60) == 1
    text = (tg.logs / "up-1.log").read_text()
    assert str(tg.state / "state.json") in text and "not valid JSON" in text
    assert f"tidegate state restore --state {tg.state}" in text and "Traceback" not in text
    assert tg.run("state", "restore", "--yes").returncode == 0
    tg.up(remote.url)
    wait_for(lambda: ready_at(tg, "web", rev2), 60, "up after the restore")


def test_routes_json_deleted_is_published_again_and_clients_never_notice(remote: Remote, tidegate: Tidegate) -> None:
    tg = tidegate
    deploy(remote, tg)
    routes = tg.state / "routes.json"
    expected = json.loads(routes.read_text())["services"]["web"]["upstreams"]
    with Client(tg, "web") as client:
        for _ in range(2):
            routes.unlink()
            wait_for(routes.exists, 15, "routes.json published again")
            assert json.loads(routes.read_text())["services"]["web"]["upstreams"] == expected
            client.served_more()
    assert client.failures == [], client.failures[:5]
    assert "Traceback" not in tg.log_text()


@pytest.fixture
def small_disk(tidegate: Tidegate) -> Iterator[Path]:
    """The state dir on its own 24 MiB tmpfs (unmounted lazily after the test)."""
    tidegate.state.mkdir(parents=True)
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(tidegate.state)],
            check=True, capture_output=True, text=True, timeout=30,
        )
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root / CAP_SYS_ADMIN): {getattr(e, 'stderr', e)}")
    try:
        yield tidegate.state
    finally:
        subprocess.run(["umount", "-l", str(tidegate.state)], capture_output=True, timeout=30)


def fill(folder: Path) -> Path:
    """Write a file until the filesystem takes no more bytes."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            chunk = b"\0" * size
            try:
                while True:
                    os.write(fd, chunk)
            except OSError:
                continue
    finally:
        os.close(fd)
    return filler


def test_disk_full_holds_actions_says_so_everywhere_and_resumes(remote: Remote, tidegate: Tidegate, small_disk: Path) -> None:
    tg = tidegate
    deploy(remote, tg)
    running = set(replica_trees(tg.state))
    with Client(tg, "web") as client:
        filler = fill(small_disk)
        rev2 = remote.push({"web.dstack.yml": service_yaml("web", 1, "v2")}, "v2")
        wait_for(lambda: f"disk full at {tg.state}" in tg.log_text(), 30, "disk full in the log")
        time.sleep(4)
        assert set(replica_trees(tg.state)) == running
        code, body = ps_json(tg)
        assert code == 1 and any(p.startswith(f"disk full at {tg.state}") for p in body["problems"])
        assert [s["name"] for s in body["services"]] == ["web"]
        token = tg.run("token", "create", "me")
        assert token.returncode == 1 and token.stderr.startswith("error: disk full at ")
        assert "Traceback" not in token.stderr
        stop = tg.run("stop", "web")
        assert stop.returncode == 1 and stop.stderr.startswith("error: disk full at ") and "Traceback" not in stop.stderr
        client.served_more()
        assert set(client.greetings) == {"v1"}

        filler.unlink()
        wait_for(lambda: ready_at(tg, "web", rev2), 90, "the roll once space is back")
        client.served_more()
    assert client.failures == [], client.failures[:5]
    assert client.greetings[-1] == "v2"
    log = tg.log_text()
    assert log.count("taking no action") == 1 and "Traceback" not in log


def test_a_broken_tokens_json_keeps_the_last_good_tokens_and_healthz_says_so(remote: Remote, tidegate: Tidegate) -> None:
    tg = tidegate
    made = tg.run("token", "create", "me")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    up, _ = deploy(remote, tg, auth=True)
    healthz = f"http://127.0.0.1:{tg.port}/healthz"
    assert httpx.get(healthz).status_code == 200
    path = tg.state / "tokens.json"
    with Client(tg, "web", {"Authorization": f"Bearer {token}"}) as client:
        path.write_text('{"schema_version": 1, "tokens": [{"na')
        wait_for(lambda: httpx.get(healthz).status_code == 503, 15, "unhealthy")
        assert str(path) in httpx.get(healthz).json()["error"]
        client.served_more()  # the token loaded before still works
        assert tg.get("web").status_code == 401
        for args in (("token", "list"), ("token", "create", "you")):
            out = tg.run(*args)
            assert out.returncode == 1 and str(path) in out.stderr and "Traceback" not in out.stderr
        newer = '{"schema_version": 99, "tokens": [], "future": true}'
        path.write_text(newer)
        out = tg.run("token", "create", "you")
        assert out.returncode == 1 and "schema_version 99" in out.stderr and path.read_text() == newer
        client.served_more()
    assert client.failures == [], client.failures[:5]
    log = tg.log_text()
    assert log.count("not valid JSON") == 1 and log.count("schema_version 99") == 1 and "Traceback" not in log

    # A gateway started on the broken file: unhealthy from the start, and it says why.
    up.send_signal(signal.SIGTERM)
    assert up.wait(30) == 0
    tg.up(remote.url)
    wait_for(lambda: httpx.get(healthz).status_code == 503, 30, "unhealthy at start")
    assert "schema_version 99" in httpx.get(healthz).json()["error"]


def test_read_only_commands_never_write_the_state_of_a_running_up(
    remote: Remote, tidegate: Tidegate, tmp_path: Path
) -> None:
    from tests.support.git_repo import make_remote

    tg = tidegate
    _, rev = deploy(remote, tg)
    (tmp_path / "other").mkdir()
    other, _ = make_remote(tmp_path / "other", {"chat.dstack.yml": service_yaml("chat", 1, "x")})
    source = tg.state / "source.json"
    before = (source.read_bytes(), source.stat().st_ino)
    repos = sorted(p.name for p in (tg.state / "repos").iterdir())
    plan = tg.run("plan", "--repo", f"file://{other}")
    assert plan.returncode == 2 and "chat" in plan.stdout, plan.stderr
    for args in (("ps",), ("validate", str(remote.work)), ("offers",)):
        out = tg.run(*args)
        assert "Traceback" not in out.stderr, (args, out.stderr)
    assert (source.read_bytes(), source.stat().st_ino) == before
    assert sorted(p.name for p in (tg.state / "repos").iterdir()) == repos
    time.sleep(2)  # a few passes of the running `up`
    code, body = ps_json(tg)
    assert code == 0 and body["source"]["revision"] == rev and str(other) not in json.dumps(body["source"])

    typo = tmp_path / "typo"
    out = subprocess.run(
        [*tg_cli(), "ps", "--state", str(typo)], capture_output=True, text=True, timeout=60, env=tg.env()
    )
    assert out.returncode == 1 and f"no state at {typo}" in out.stderr and not typo.exists()


def tg_cli() -> list[str]:
    import sys

    return [sys.executable, "-m", "reconciler.cli.main"]


def test_a_symlink_out_of_the_repo_is_a_diagnostic_and_the_rest_deploys(remote: Remote, tidegate: Tidegate) -> None:
    tg = tidegate
    os.symlink("/etc/passwd", remote.work / "evil.dstack.yml")
    os.symlink("../..", remote.work / "data")
    rev = remote.push({"web.dstack.yml": service_yaml("web", 1, "v1")}, "web + links out")
    tg.up(remote.url)
    wait_for(lambda: ready_at(tg, "web", rev), 90, "the rest deploys")
    code, body = ps_json(tg)
    assert code == 0  # a config diagnostic is not a state problem
    diagnostics = " ".join(body["config_diagnostics"])
    assert "evil.dstack.yml:1:1: symbolic link to /etc/passwd leads outside the repository" in diagnostics
    assert "data:1:1: symbolic link to ../.." in diagnostics
    plan = tg.run("plan", "--repo", remote.url)
    assert "evil.dstack.yml:1:1" in plan.stdout + plan.stderr and "Traceback" not in plan.stderr
    validate = subprocess.run([*tg_cli(), "validate", str(remote.work)], capture_output=True, text=True, timeout=60)
    assert validate.returncode == 1 and "evil.dstack.yml:1:1: error: symbolic link" in validate.stdout
    assert "root:" not in validate.stdout  # the target is never shown
    work = next(p for p in (tg.state / "replicas").iterdir() if p.name.startswith("web-")) / "work"
    assert (work / "app.py").exists() and not (work / "evil.dstack.yml").is_symlink() and not (work / "data").exists()
    assert "Traceback" not in tg.log_text()


def test_housekeeping_collects_litter_on_start_and_keeps_what_is_live(remote: Remote, tidegate: Tidegate) -> None:
    tg = tidegate
    up, rev = deploy(remote, tg)
    up.send_signal(signal.SIGTERM)
    assert up.wait(30) == 0
    root = tg.state / "replicas"
    live = [p for p in (root / ".locks").iterdir()]
    assert live, "the running replica's lock file"
    old = time.time() - 7200
    litter = [root / ".locks" / f"web-{i:08x}-0.lock" for i in range(40)]
    litter += [root / ".venvs" / ".gone-py3.11.lock"]
    litter += [root / ".logs" / f"web-{i:08x}-0.log" for i in range(60)]
    repo = next((tg.state / "repos").iterdir())
    litter += [repo / "objects" / "tmp_obj_AbCdEf", repo / "objects" / "pack" / "tmp_pack_123456"]
    for i, p in enumerate(litter):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
        os.utime(p, (old - i, old - i))
    tg.up(remote.url)
    wait_for(lambda: "housekeeping: removed" in tg.log_text(), 60, "housekeeping on start")
    gone = [p for p in litter if not p.exists()]
    kept_logs = [p for p in litter if p.exists()]
    assert all(p.parent.name == ".logs" for p in kept_logs) and len(kept_logs) == 50
    assert len(gone) == len(litter) - 50
    assert all(p.exists() for p in live)
    wait_for(lambda: ready_at(tg, "web", rev), 60, "still serving")
