"""`delete` of a local replica is final, even when it lands while the replica is still starting.

The promise (backends/local/proc.py): once `delete` returns, no process of the replica exists and
none appears later. These tests hammer the windows where that is hard: delete right after create
(the supervisor still importing asyncio, bwrap still setting up its sandbox, the app not yet
exec'd and so not yet marked), and a creator killed with SIGKILL at a random point of `create`
(a supervisor between fork and exec carries no mark at all) followed by a delete from another
backend instance, as after a reconciler crash. Other processes loading the CPU widen the windows.

What counts as "a process of the replica" is judged here without the backend's own bookkeeping:
any live process whose environment carries a mark under the test's root, whose command line
names a path under it, or whose working directory is under it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from test_local import spec_for

from backends.local.backend import LocalBackend
from backends.local.layout import ReplicaPaths
from backends.local.proc import MARK_DIR
from backends.local.relay import still_wanted
from backends.local.spawn import Launch, relay_command, spawn_supervisor
from backends.workdir import copy_workdir

Factory = Callable[..., LocalBackend]
DELAYS = (0.0, 0.0, 0.001, 0.003, 0.01, 0.02, 0.05, 0.1)  # between create returning and delete
KILL_DELAYS = (0.0, 0.005, 0.02, 0.05, 0.08, 0.12, 0.2, 0.3, 0.5)  # into create, then SIGKILL
LATER = 1.0  # seconds after delete returned: nothing may have appeared since

# A reconciler in miniature: builds a backend on `root` and creates one replica; killed mid-way.
CREATOR = """
import json, sys
from backends.base import ReplicaSpec
from backends.local.backend import LocalBackend
root, spec = sys.argv[1], json.loads(sys.argv[2])
backend = LocalBackend(root=root, owner="test-owner", grace=1.0, venv_with_pip=False)
replica = ReplicaSpec(**{**spec, "commands": tuple(spec["commands"])})
print("go", flush=True)
backend.create(replica)
print("created", flush=True)
"""


def leftovers(root: Path) -> list[str]:
    """Live processes that belong to a replica under `root` (see the module docstring)."""
    prefix = str(root) + os.sep
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid == os.getpid() or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            cmd = proc.cmdline()
            mark = proc.environ().get(MARK_DIR, "")
            named = any(prefix in arg or arg == str(root) for arg in cmd)
            inside = (proc.cwd() + os.sep).startswith(prefix)
            if mark.startswith(prefix) or named or inside:
                found.append(f"{proc.pid} {' '.join(cmd)[:120]}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


@pytest.fixture
def cpu_load() -> Iterator[Callable[[int], None]]:
    """Start `n` busy processes (another tenant of the machine) until the test ends. At nice 10:
    they still take every idle cycle and preempt the replica's start-up now and then, but they do
    not starve the tests another pytest-xdist worker runs beside this one (two busy loops at nice
    0 on a two-core machine once made a timing test there fail)."""
    burners: list[subprocess.Popen[bytes]] = []

    def start(n: int) -> None:
        for _ in range(n):
            burners.append(subprocess.Popen([sys.executable, "-c", "import os\nos.nice(10)\nwhile True: pass"]))

    yield start
    for burner in burners:
        burner.kill()
        burner.wait()


def create_then_delete(make_backend: Factory, app_dir: Path, rounds: int, seed: int) -> None:
    rng = random.Random(seed)
    backend = make_backend(grace=1.0)
    for ordinal in range(rounds):
        spec = spec_for(app_dir, ordinal=ordinal)
        backend.create(spec)
        time.sleep(rng.choice(DELAYS))
        backend.delete(spec.replica_id)
        assert leftovers(backend.root) == [], f"round {ordinal}: alive right after delete returned"
        assert not (backend.root / spec.replica_id).exists()
    time.sleep(LATER)
    assert leftovers(backend.root) == [], f"alive {LATER:g}s after the last delete returned"


def kill_creator_then_delete(make_backend: Factory, app_dir: Path, rounds: int, seed: int) -> int:
    """Rounds of: a creator process SIGKILLed at a random point of `create`, then `delete` from
    this process. Returns how many creators were killed before `create` returned (the point)."""
    rng = random.Random(seed)
    backend = make_backend(grace=1.0)
    repo = Path(__file__).resolve().parents[2]
    interrupted = 0
    for ordinal in range(rounds):
        spec = spec_for(app_dir, ordinal=ordinal)
        fields = {
            "replica_id": spec.replica_id, "service": spec.service, "spec_hash": spec.spec_hash,
            "ordinal": spec.ordinal, "port": spec.port, "commands": list(spec.commands),
            "workdir": spec.workdir,
        }  # fmt: skip
        creator = subprocess.Popen(
            [sys.executable, "-c", CREATOR, str(backend.root), json.dumps(fields)],
            cwd=repo,
            stdout=subprocess.PIPE,
        )
        assert creator.stdout is not None
        assert creator.stdout.readline().strip() == b"go"
        time.sleep(rng.choice(KILL_DELAYS))
        creator.send_signal(signal.SIGKILL)
        creator.wait()
        if b"created" not in creator.stdout.read():
            interrupted += 1
        creator.stdout.close()
        backend.delete(spec.replica_id)
        assert leftovers(backend.root) == [], f"round {ordinal}: alive right after delete returned"
        assert not (backend.root / spec.replica_id).exists()
    time.sleep(LATER)
    assert leftovers(backend.root) == [], f"alive {LATER:g}s after the last delete returned"
    return interrupted


def test_delete_right_after_create_is_final(make_backend: Factory, app_dir: Path) -> None:
    create_then_delete(make_backend, app_dir, rounds=6, seed=1)


SLOW_BWRAP = """#!/bin/sh
# bwrap reached only after a pause: a sandbox that has not exec'd yet (a loaded machine, stretched)
sleep {pause}
exec {bwrap} "$@"
"""


def test_delete_while_the_sandbox_has_not_execd_yet_is_final(
    make_backend: Factory, app_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The supervisor has forked the sandbox, which has not exec'd bwrap yet: no mark in its
    environment (the supervisor strips it for bwrap) and no bwrap command line. Stopping only what
    carries a mark misses it, and it starts the app after delete returned."""
    real = shutil.which("bwrap")
    if real is None or os.geteuid() != 0:
        pytest.skip("needs bwrap and root (the replica sandbox)")
    grace = 1.0
    tools = tmp_path / "slow-tools"
    tools.mkdir()
    (tools / "bwrap").write_text(SLOW_BWRAP.format(pause=grace + 0.5, bwrap=real))
    (tools / "bwrap").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
    backend = make_backend(grace=grace)
    assert backend.sandbox_unavailable() is None
    for ordinal, delay in enumerate((0.0, 0.3)):  # supervisor still starting; supervisor settled
        spec = spec_for(app_dir, ordinal=ordinal)
        backend.create(spec)
        time.sleep(delay)
        backend.delete(spec.replica_id)
        assert leftovers(backend.root) == [], f"round {ordinal}: alive right after delete returned"
    time.sleep(grace + 0.5 + LATER)
    assert leftovers(backend.root) == [], "the sandbox started after delete returned"


def test_delete_after_a_creator_killed_mid_create_is_final(make_backend: Factory, app_dir: Path) -> None:
    kill_creator_then_delete(make_backend, app_dir, rounds=5, seed=2)


@pytest.mark.slow
def test_delete_right_after_create_is_final_under_load(
    make_backend: Factory, app_dir: Path, cpu_load: Callable[[int], None]
) -> None:
    cpu_load(2)
    create_then_delete(make_backend, app_dir, rounds=40, seed=int(time.time()))


@pytest.mark.slow
def test_delete_after_a_creator_killed_mid_create_is_final_under_load(
    make_backend: Factory, app_dir: Path, cpu_load: Callable[[int], None]
) -> None:
    cpu_load(2)
    interrupted = kill_creator_then_delete(make_backend, app_dir, rounds=30, seed=int(time.time()))
    assert interrupted > 0, "no creator was killed inside create: the test exercised nothing"


def test_a_supervisor_whose_start_was_revoked_starts_nothing(tmp_path: Path, app_dir: Path) -> None:
    """The one process no scan can see is a supervisor between fork and exec (its creator killed
    there). A stop revokes the start token first; such a supervisor must then start nothing."""
    paths = ReplicaPaths(tmp_path / "replicas", "web-77656200-0")
    paths.log.parent.mkdir(parents=True)
    copy_workdir(str(app_dir), paths.work)
    paths.script.write_text("set -e\nexec python3 app.py 8000\n")
    meta = {"owner": "test-owner", "state": "deleting", "start_token": None}
    paths.meta.write_text(json.dumps(meta))
    launch = Launch(paths=paths, port=8000, netns=False, log_max_bytes=1 << 20, start_token="revoked")
    env = {"PATH": os.environ["PATH"], MARK_DIR: str(paths.dir)}
    proc, handshake = spawn_supervisor(relay_command(launch), env, paths, timeout=20.0)
    assert proc.wait(timeout=20.0) == 1
    assert handshake == "error: the replica was stopped before its supervisor started"
    assert not paths.log.exists() and not paths.exit_file.exists() and leftovers(paths.root) == []


@pytest.mark.parametrize(
    ("meta", "wanted"),
    [
        pytest.param({"state": "starting", "start_token": "t"}, True, id="its-start"),
        pytest.param({"state": "started", "start_token": "t"}, True, id="recorded"),
        pytest.param({"state": "deleting", "start_token": "t"}, False, id="being-deleted"),
        pytest.param({"state": "starting", "start_token": None}, False, id="revoked"),
        pytest.param({"state": "starting", "start_token": "u"}, False, id="a-newer-start"),
        pytest.param(None, False, id="replica-gone"),
    ],
)
def test_still_wanted(tmp_path: Path, meta: dict[str, object] | None, wanted: bool) -> None:
    path = tmp_path / "replica.json"
    if meta is not None:
        path.write_text(json.dumps(meta))
    assert still_wanted(str(path), "t") is wanted
