"""The local backend with real processes, namespaces and unix sockets, plus its pure helpers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from contract import BackendContract, SpecFactory, eventually

from backends.base import (
    GpuRequirement,
    PermanentError,
    Range,
    ReplicaInfo,
    ReplicaSpec,
    ReplicaStatus,
    Requirements,
    TemporaryError,
)
from backends.local import sandbox as local_sandbox
from backends.local.backend import META, LocalBackend, NetworkMode
from backends.local.host import Gpu, Machine, match_offer, parse_nvidia_smi, python_minor
from backends.local.layout import ReplicaPaths, script_for, socket_path
from backends.local.proc import MARK_DIR, MARK_OWNER, find_supervisor, marked_processes
from backends.local.relay import RotatingLog
from backends.local.spawn import Launch, relay_command, replica_env
from backends.workdir import copy_workdir

DEADLINE = 20.0  # bound for "the socket answers" on a loaded 2-core machine; not a speed assertion
Factory = Callable[..., LocalBackend]


def spec_for(
    app_dir: Path,
    service: str = "web",
    ordinal: int = 0,
    *,
    port: int = 8000,
    commands: tuple[str, ...] | None = None,
    **kwargs: Any,
) -> ReplicaSpec:
    spec_hash = (service.encode().hex() + "0" * 8)[:8]
    return ReplicaSpec(
        replica_id=f"{service}-{spec_hash}-{ordinal}",
        service=service,
        spec_hash=spec_hash,
        ordinal=ordinal,
        port=port,
        commands=commands if commands is not None else (f"exec python3 app.py {port}",),
        workdir=str(app_dir),
        **kwargs,
    )


def answer(address: str | None) -> dict[str, Any] | None:
    """The app's JSON answer over the replica's address, or None while it is not listening."""
    assert address is not None and address.startswith("unix://")
    transport = httpx.HTTPTransport(uds=address.removeprefix("unix://"))
    try:
        with httpx.Client(transport=transport, timeout=5) as client:
            response = client.get("http://replica/")
    except httpx.TransportError:
        return None
    if response.status_code != 200:
        return None
    data: dict[str, Any] = json.loads(response.content)
    return data


def wait_answer(info: ReplicaInfo) -> dict[str, Any]:
    return eventually(lambda: answer(info.address), timeout=DEADLINE, what=f"{info.replica_id} answers")


def wait_status(backend: LocalBackend, replica_id: str, status: ReplicaStatus, timeout: float = DEADLINE) -> ReplicaInfo:
    def check() -> ReplicaInfo | None:
        info = backend.describe(replica_id)
        return info if info is not None and info.status == status else None

    return eventually(check, timeout=timeout, what=f"{replica_id} {status}")


def supervisors(backend: LocalBackend, replica_id: str) -> list[int]:
    """Pids of every supervisor (session leader) of a replica, found by scanning /proc."""
    replica_dir = str(backend.root / replica_id)
    return [p.pid for p in marked_processes(replica_dir) if os.getsid(p.pid) == p.pid]


# ---- the shared contract --------------------------------------------------------------------


class TestLocalContract(BackendContract):
    eventually_timeout = DEADLINE

    @pytest.fixture
    def backend(self, make_backend: Factory) -> LocalBackend:
        return make_backend()

    @pytest.fixture
    def make_spec(self, app_dir: Path) -> SpecFactory:
        def make(ordinal: int = 0, service: str = "contract") -> ReplicaSpec:
            return spec_for(app_dir, service, ordinal)

        return make

    def test_offers_this_machine_for_free(self, backend: LocalBackend) -> None:
        offers = backend.offers(Requirements(cpus=Range(1, None), memory_gb=Range(0.1, None)))
        assert len(offers) == 1
        assert (offers[0].backend, offers[0].region, offers[0].price) == ("local", "local", 0.0)


# ---- processes, namespaces, sockets ------------------------------------------------------------


def test_replicas_of_two_services_share_port_8000(make_backend: Factory, app_dir: Path) -> None:
    backend = make_backend()
    specs = [spec_for(app_dir, "web", 0), spec_for(app_dir, "web", 1), spec_for(app_dir, "api", 0)]
    infos = [backend.create(s) for s in specs]
    assert len({i.address for i in infos}) == 3
    for spec, info in zip(specs, infos, strict=True):
        assert info.status == ReplicaStatus.RUNNING
        # `<dir>/http.sock`, or the short fallback when a deep tmp dir (xdist's) makes it too long
        assert info.address == f"unix://{socket_path(backend.root / spec.replica_id)}"
        reply = wait_answer(info)
        assert reply["replica"] == spec.replica_id
        assert reply["files"] == ["app.py"]  # the repo copy, without .git
    assert {i.replica_id for i in backend.list_owned()} == {s.replica_id for s in specs}


def test_env_reaches_the_replica_but_never_the_disk(make_backend: Factory, app_dir: Path) -> None:
    backend = make_backend()
    secret = "s3cr3t-value-5f0e1c"
    info = backend.create(spec_for(app_dir, env={"GREETING": secret}))
    assert wait_answer(info)["greeting"] == secret
    meta = json.loads((backend.root / info.replica_id / META).read_text())
    assert meta["env_names"] == ["GREETING"]
    for path in backend.root.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_python_gets_a_cached_isolated_venv(make_backend: Factory, app_dir: Path) -> None:
    backend = make_backend()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    commands = ("exec python app.py 8000",)  # `python` must resolve inside the venv
    first = backend.create(spec_for(app_dir, ordinal=0, python=version, commands=commands))
    second = backend.create(spec_for(app_dir, ordinal=1, python=version, commands=commands))
    venvs = backend.root / ".venvs"
    replies = [wait_answer(first), wait_answer(second)]
    assert replies[0]["prefix"] == replies[1]["prefix"]
    assert Path(replies[0]["prefix"]).parent == venvs
    assert replies[0]["virtual_env"] == replies[0]["prefix"]
    # One venv, its lock file and (sandboxed) the record of its base interpreter.
    assert len(list(venvs.iterdir())) == (3 if backend.sandbox_unavailable() is None else 2)
    backend.delete(first.replica_id)
    assert Path(replies[0]["prefix"]).is_dir()  # still used by the second replica
    backend.delete(second.replica_id)
    assert not Path(replies[0]["prefix"]).exists()  # pruned with its last replica
    assert not local_sandbox.venv_base_file(Path(replies[0]["prefix"])).exists()


def test_missing_python_version_is_a_permanent_error(make_backend: Factory, app_dir: Path) -> None:
    backend = make_backend()
    spec = spec_for(app_dir, python="3.99")
    reason = backend.can_run(spec)
    assert reason is not None and "3.99" in reason
    with pytest.raises(PermanentError, match=r"3\.99"):
        backend.create(spec)
    assert backend.describe(spec.replica_id) is None


def test_image_without_an_engine_is_a_permanent_error(make_backend: Factory, app_dir: Path) -> None:
    backend = make_backend()
    spec = spec_for(app_dir, image="ghcr.io/huggingface/text-generation-inference:latest", commands=())
    with pytest.raises(PermanentError, match="image"):
        backend.create(spec)
    assert backend.list_owned() == []


def test_new_backend_adopts_running_replica(make_backend: Factory, app_dir: Path) -> None:
    spec = spec_for(app_dir)
    first = make_backend().create(spec)
    wait_answer(first)
    restarted = make_backend()  # the reconciler restarted: a fresh instance on the same root
    adopted = restarted.describe(spec.replica_id)
    assert adopted is not None and adopted.status == ReplicaStatus.RUNNING
    assert adopted.handle == first.handle
    again = restarted.create(spec)
    assert again.handle == first.handle
    assert supervisors(restarted, spec.replica_id) == [int(str(first.handle).split(":")[0])]
    assert wait_answer(again)["replica"] == spec.replica_id


def test_replica_spawned_before_pid_was_recorded_is_found(make_backend: Factory, app_dir: Path) -> None:
    spec = spec_for(app_dir)
    first = make_backend().create(spec)
    meta_path = make_backend().root / spec.replica_id / META
    meta = json.loads(meta_path.read_text())
    meta.update(state="starting", pid=None, started=None)  # as if killed right after the spawn
    meta_path.write_text(json.dumps(meta))
    restarted = make_backend()
    found = restarted.describe(spec.replica_id)
    assert found is not None and found.status == ReplicaStatus.RUNNING
    assert found.handle == first.handle
    assert restarted.create(spec).handle == first.handle
    assert len(supervisors(restarted, spec.replica_id)) == 1
    completed = json.loads(meta_path.read_text())  # create() recorded the adopted supervisor
    assert (completed["state"], completed["pid"]) == ("started", int(str(first.handle).split(":")[0]))


def test_delete_stops_the_whole_process_tree(make_backend: Factory, app_dir: Path) -> None:
    backend = make_backend(grace=0.5)
    commands = ("sleep 300 &", "bash -c 'trap \"\" TERM; sleep 300' &", "exec python3 app.py 8000")
    info = backend.create(spec_for(app_dir, commands=commands))
    wait_answer(info)
    replica_dir = str(backend.root / info.replica_id)
    pids = [p.pid for p in marked_processes(replica_dir)]
    assert len(pids) >= 4  # relay, app, sleep, sleep ignoring TERM (bash may exec it)
    backend.delete(info.replica_id)
    assert not [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    assert backend.describe(info.replica_id) is None
    assert not (backend.root / info.replica_id).exists()
    backend.delete(info.replica_id)  # gone counts as success


def test_failing_commands_exit_with_code_and_last_lines(make_backend: Factory, app_dir: Path) -> None:
    backend = make_backend()
    spec = spec_for(app_dir, commands=("echo first-line", "echo boom >&2", "exit 3", "echo never"))
    backend.create(spec)
    exited = wait_status(backend, spec.replica_id, ReplicaStatus.EXITED)
    assert exited.message is not None
    assert "code 3" in exited.message and "boom" in exited.message and "never" not in exited.message
    assert backend.logs(spec.replica_id) == ["first-line", "boom"]
    assert backend.log_path(spec.replica_id) == backend.root / spec.replica_id / "logs" / "replica.log"
    # create() restarts an exited replica under the same id
    backend.create(spec)
    wait_status(backend, spec.replica_id, ReplicaStatus.EXITED)
    assert backend.logs(spec.replica_id).count("first-line") == 2
    backend.delete(spec.replica_id)
    assert backend.logs(spec.replica_id)[-1] == "boom"  # last lines kept after delete


def test_shared_network_refuses_a_busy_port(make_backend: Factory, app_dir: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = make_backend(network=NetworkMode.SHARED)
    first = backend.create(spec_for(app_dir, ordinal=0, port=port, trusted=True))
    assert wait_answer(first)["replica"] == first.replica_id
    with pytest.raises(TemporaryError, match=f"port {port} is busy"):
        backend.create(spec_for(app_dir, ordinal=1, port=port, trusted=True))


def test_supervisor_found_by_scan_is_the_session_leader(make_backend: Factory, app_dir: Path) -> None:
    backend = make_backend()
    info = backend.create(spec_for(app_dir))
    found = find_supervisor(str(backend.root / info.replica_id))
    assert found is not None and found.handle == info.handle


# ---- pure helpers ------------------------------------------------------------------------------


def test_rotating_log_keeps_one_backup(tmp_path: Path) -> None:
    log = RotatingLog(tmp_path / "r.log", max_bytes=100)
    for i in range(30):
        log.write(f"line {i:02d}\n".encode())
    log.close()
    assert (tmp_path / "r.log").stat().st_size <= 100
    assert (tmp_path / "r.log.1").stat().st_size <= 100
    assert (tmp_path / "r.log").read_text().splitlines()[-1] == "line 29"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("", (), id="no-gpus"),
        pytest.param("NVIDIA A100-SXM4-80GB, 81920 MiB\n", (Gpu("NVIDIA A100-SXM4-80GB", 80.0),), id="a100"),
        pytest.param(
            "Tesla T4, 15360 MiB\nTesla T4, 15360 MiB\n",
            (Gpu("Tesla T4", 15.0), Gpu("Tesla T4", 15.0)),
            id="two",
        ),
        pytest.param("garbage\n", (), id="garbage"),
    ],
)
def test_parse_nvidia_smi(text: str, expected: tuple[Gpu, ...]) -> None:
    assert parse_nvidia_smi(text) == expected


A100X2 = Machine(cpus=16, memory_gb=128, gpus=(Gpu("NVIDIA A100-SXM4-80GB", 80.0),) * 2)
CPU_ONLY = Machine(cpus=2, memory_gb=8)


@pytest.mark.parametrize(
    ("req", "machine", "gpus"),
    [
        pytest.param(Requirements(), CPU_ONLY, None, id="cpu-defaults-fit"),
        pytest.param(Requirements(cpus=Range(4, None)), CPU_ONLY, "none", id="too-few-cpus"),
        pytest.param(Requirements(memory_gb=Range(16, None)), CPU_ONLY, "none", id="too-little-memory"),
        pytest.param(Requirements(gpu=GpuRequirement()), CPU_ONLY, "none", id="gpu-on-cpu-machine"),
        pytest.param(Requirements(gpu=GpuRequirement(names=("A100",))), A100X2, 1, id="a100-one"),
        pytest.param(
            Requirements(gpu=GpuRequirement(memory_gb=Range(80, None), count=Range(2, 2))),
            A100X2,
            2,
            id="80gb-x2",
        ),
        pytest.param(Requirements(gpu=GpuRequirement(names=("H100",))), A100X2, "none", id="wrong-name"),
        pytest.param(
            Requirements(gpu=GpuRequirement(count=Range(4, None))), A100X2, "none", id="too-few-gpus"
        ),
        pytest.param(Requirements(spot_policy="spot"), CPU_ONLY, "none", id="spot-only"),
        pytest.param(Requirements(backends=("aws",)), CPU_ONLY, "none", id="other-backend"),
    ],
)
def test_match_offer(req: Requirements, machine: Machine, gpus: int | str | None) -> None:
    offer = match_offer(req, machine)
    if gpus == "none":
        assert offer is None
        return
    assert offer is not None and offer.price == 0.0 and offer.cpus == machine.cpus
    assert (offer.gpu.count if offer.gpu else None) == gpus


@pytest.mark.parametrize(
    ("version", "minor"),
    [pytest.param("3.11", "3.11", id="minor"), pytest.param("3.12.1", "3.12", id="patch")],
)
def test_python_minor(version: str, minor: str) -> None:
    assert python_minor(version) == minor


def test_python_minor_rejects_garbage() -> None:
    with pytest.raises(PermanentError):
        python_minor("latest")


def test_socket_path_stays_bindable_for_deep_roots(tmp_path: Path) -> None:
    short = tmp_path / "r" / "web-1234abcd-0"
    deep = tmp_path / ("d" * 120) / "web-1234abcd-0"
    assert socket_path(short) == short / "http.sock" or len(str(short / "http.sock")) > 100
    assert len(str(socket_path(deep))) <= 100
    assert socket_path(deep) == socket_path(deep)  # stable across restarts


# ---- images through an engine (a fake `docker` that runs the app on the published port) ---------

FAKE_ENGINE = """#!{python}
import json, os, sys
with open({log!r}, "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1] != "run":
    sys.exit(0)  # info, rm -f
args, opts = sys.argv[2:], {{}}
while args[0].startswith("-"):
    flag = args.pop(0)
    if flag not in ("--rm", "--init"):
        opts.setdefault(flag, []).append(args.pop(0))
host_port = opts["-p"][0].split(":")[1]
os.chdir(opts["-v"][0].split(":")[0])
os.execv(sys.executable, [sys.executable, "app.py", host_port])
"""


def test_image_runs_through_an_engine_that_answers(
    make_backend: Factory, app_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    engine_log = tmp_path / "engine.log"
    # The log path is baked in: the engine client sees only the replica's allowlisted env.
    (fake_bin / "docker").write_text(FAKE_ENGINE.format(python=sys.executable, log=str(engine_log)))
    (fake_bin / "docker").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    backend = make_backend()
    secret = "image-secret-93ab"
    spec = spec_for(app_dir, image="example/app:1", commands=(), env={"GREETING": secret})
    assert backend.can_run(spec) is None
    info = backend.create(spec)
    reply = wait_answer(info)
    assert (reply["replica"], reply["greeting"]) == (spec.replica_id, secret)
    backend.delete(spec.replica_id)
    calls = [json.loads(line) for line in engine_log.read_text().splitlines()]
    run = next(c for c in calls if c[0] == "run")
    assert run[run.index("-e") + 1] == "GREETING" and secret not in engine_log.read_text()
    assert ["rm", "-f", f"tidegate-{spec.replica_id}"] in calls


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        pytest.param(
            {"commands": ("pip install x", "python app.py")},
            "set -e\npip install x\npython app.py\n",
            id="cmds",
        ),
        pytest.param(
            {"image": "img:1", "commands": ("a", "b"), "env": {"TOKEN": "v"}},
            "set -e\nexec docker run --rm --init --name tidegate-web-77656200-0 --label tidegate.owner=me "
            "--label tidegate.replica=web-77656200-0 -p 127.0.0.1:4242:8000 -v /w:/workflow -w /workflow "
            "-e TOKEN img:1 /bin/sh -c 'a && b'\n",
            id="image",
        ),
    ],
)
def test_script_for(kwargs: dict[str, Any], expected: str) -> None:
    spec = spec_for(Path("/w"), **kwargs)
    engine = "docker" if "image" in kwargs else None
    port = 4242 if engine else None
    assert script_for(spec, engine=engine, owner="me", host_port=port, work=Path("/w")) == expected


def test_copy_workdir_drops_git_and_dstackignore(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for rel in (".git/HEAD", ".dstackignore", "app.py", "data/big.bin", "data/keep.txt", "sub/x.pyc"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text("x")
    (src / ".dstackignore").write_text("# comment\n*.pyc\ndata/big.bin\n")
    copy_workdir(str(src), tmp_path / "dst")
    copied = sorted(
        str(p.relative_to(tmp_path / "dst")) for p in (tmp_path / "dst").rglob("*") if p.is_file()
    )
    assert copied == [".dstackignore", "app.py", "data/keep.txt"]


@pytest.mark.slow
def test_pip_in_commands_installs_into_the_replica_venv(make_backend: Factory, app_dir: Path) -> None:
    backend = make_backend(venv_with_pip=True)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    spec = spec_for(app_dir, python=version, commands=("pip --version", "exit 0"))
    backend.create(spec)
    # building a venv with pip (ensurepip) took over 20 s with the suite running on two workers
    wait_status(backend, spec.replica_id, ReplicaStatus.EXITED, timeout=120)
    (line,) = [x for x in backend.logs(spec.replica_id) if x.startswith("pip ")]
    assert str(backend.root / ".venvs") in line


CRASHING_CREATE = """
import os, signal, subprocess, sys
from pathlib import Path
from backends.local import spawn as local_spawn
from backends.base import ReplicaSpec
from backends.local.backend import LocalBackend

class DieAfterSpawn:  # kill -9 right after the spawn, before the handshake and the pid record
    def __getattr__(self, name):
        return getattr(subprocess, name)

    def Popen(self, *args, **kwargs):
        subprocess.Popen(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)

local_spawn.subprocess = DieAfterSpawn()
spec = ReplicaSpec(replica_id=sys.argv[2], service="web", spec_hash="77656230", ordinal=0, port=8000,
                   commands=("exec python3 app.py 8000",), workdir=sys.argv[3])
LocalBackend(root=Path(sys.argv[1]), owner="test-owner", venv_with_pip=False).create(spec)
"""


def test_kill_9_between_spawn_and_record_never_starts_twice(make_backend: Factory, app_dir: Path) -> None:
    spec = spec_for(app_dir)
    backend = make_backend()
    root = str(backend.root)
    proc = subprocess.run(
        [sys.executable, "-c", CRASHING_CREATE, root, spec.replica_id, str(app_dir)],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == -9, proc.stderr.decode()
    assert json.loads((backend.root / spec.replica_id / META).read_text())["pid"] is None
    found = eventually(lambda: supervisors(backend, spec.replica_id), timeout=DEADLINE, what="spawned relay")
    info = backend.create(spec)
    assert info.status == ReplicaStatus.RUNNING
    assert supervisors(backend, spec.replica_id) == found
    assert wait_answer(info)["replica"] == spec.replica_id


def test_venv_is_built_while_the_replica_is_provisioning(
    make_backend: Factory, app_dir: Path, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    slow_python = tmp_path / "slow-python"  # waits for `go`, then builds the venv for real
    slow_python.write_text(
        f'#!/bin/bash\nwhile [ ! -e {go} ]; do sleep 0.02; done\nexec {sys.executable} "$@"\n'
    )
    slow_python.chmod(0o755)
    backend = make_backend()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    backend._interpreters[version] = str(slow_python)
    spec = spec_for(app_dir, python=version, commands=("exec python app.py 8000",))
    info = backend.create(spec)
    assert info.status == ReplicaStatus.PROVISIONING
    assert backend.describe(spec.replica_id) == info  # still waiting for `go`
    go.touch()
    wait_status(backend, spec.replica_id, ReplicaStatus.RUNNING)
    assert Path(wait_answer(info)["prefix"]).parent == backend.root / ".venvs"


def test_failed_venv_build_exits_with_the_reason(make_backend: Factory, app_dir: Path) -> None:
    backend = make_backend()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    backend._interpreters[version] = "/bin/false"
    spec = spec_for(app_dir, python=version)
    backend.create(spec)
    exited = wait_status(backend, spec.replica_id, ReplicaStatus.EXITED)
    assert exited.message is not None
    assert "code 1" in exited.message and "creating the virtualenv failed" in exited.message


@pytest.mark.parametrize(
    ("venv", "path_head"),
    [pytest.param(None, "/usr/local/sbin", id="system-path"), pytest.param(Path("/v"), "/v/bin", id="venv-first")],
)
def test_replica_env_is_an_allowlist_and_values_stay_off_the_command_line(venv: Path | None, path_head: str) -> None:
    spec = spec_for(Path("/w"), env={"HF_TOKEN": "hf_secret", "TIDEGATE_REPLICA_DIR": "/forged"})
    paths = ReplicaPaths(Path("/r"), spec.replica_id)
    host = {
        "PATH": "/root/.pyenv/shims:/usr/bin", "PYTHONHOME": "/x", "LANG": "C.UTF-8", "LC_ALL": "C",
        "TZ": "UTC", "GITHUB_TOKEN": "ghp_x", "AWS_SECRET_ACCESS_KEY": "aws_x",
        "TIDEGATE_WEBHOOK_SECRET": "whsec", "HTTPS_PROXY": "http://corp:3128",
    }  # fmt: skip
    env = replica_env(host, spec, paths.dir, "me", venv, home=paths.home, tmpdir=Path("/tmp"))
    assert env["PATH"].split(os.pathsep)[0] == path_head
    assert "/root/.pyenv/shims" not in env["PATH"]
    assert (env["HF_TOKEN"], env[MARK_DIR], env[MARK_OWNER]) == ("hf_secret", "/r/web-77656200-0", "me")
    assert (env["HOME"], env["TMPDIR"], env["LANG"], env["LC_ALL"], env["TZ"]) == (
        "/r/web-77656200-0/home", "/tmp", "C.UTF-8", "C", "UTC",
    )
    assert env["HTTPS_PROXY"] == "http://corp:3128"  # host network: the host's proxy
    for leaked in ("PYTHONHOME", "GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "TIDEGATE_WEBHOOK_SECRET"):
        assert leaked not in env
    proxied = replica_env(
        host, spec, paths.dir, "me", venv, home=paths.home, tmpdir=Path("/tmp"), proxy={"HTTPS_PROXY": "http://127.0.0.1:1"}
    )
    assert proxied["HTTPS_PROXY"] == "http://127.0.0.1:1"  # in a namespace: only our egress proxy
    launch = Launch(paths, port=8000, netns=True, log_max_bytes=10, venv=venv, venv_python="/py")
    cmd = relay_command(launch)
    assert "hf_secret" not in " ".join(cmd)
    assert "--netns" in cmd and ("--venv" in cmd) == (venv is not None)


EGRESS_CLIENT = """
import os, socket, sys, urllib.request
# Plain HTTP through the proxy the backend configured (absolute-form request). The target is on
# loopback (all a test may reach), which NO_PROXY would send direct: drop it for this client only.
proxy = os.environ["HTTP_PROXY"]
for name in ("NO_PROXY", "no_proxy"):
    os.environ.pop(name, None)
opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy}))
try:
    plain = opener.open(f"http://127.0.0.1:{sys.argv[1]}/plain", timeout=10).read().decode()
except urllib.error.HTTPError as e:
    plain = f"refused {e.code}"
# CONNECT tunnel, the way pip reaches an https index.
host, port = proxy.removeprefix("http://").split(":")
s = socket.create_connection((host, int(port)), timeout=10)
s.sendall(f"CONNECT 127.0.0.1:{sys.argv[1]} HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n".encode())
status = s.recv(4096).split(b"\\r\\n")[0].decode()
tunnel = "-"
if " 200 " in status:
    s.sendall(b"GET /tunnel HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n")
    tunnel = b"".join(iter(lambda: s.recv(4096), b"")).decode().split("\\r\\n\\r\\n", 1)[1]
print(f"EGRESS {plain} | {status} | {tunnel}", flush=True)
"""


@pytest.mark.parametrize(
    ("trusted", "expected"),
    [
        pytest.param(
            True, "EGRESS host-side/plain | HTTP/1.1 200 Connection Established | host-side/tunnel", id="allowed-by-rule"
        ),
        pytest.param(False, "EGRESS refused 403 | HTTP/1.1 403 Forbidden | -", id="preview-ignores-the-rule"),
    ],
)
def test_namespaced_replica_reaches_out_through_the_egress_proxy(
    make_backend: Factory, app_dir: Path, trusted: bool, expected: str
) -> None:
    """`pip install` in commands needs the network: the replica's namespace has only lo, so the
    backend gives it HTTP(S)_PROXY to a proxy outside the namespace. The target here is a server
    in the host's namespace on 127.0.0.1, unreachable from inside without the proxy, and denied
    by the proxy's policy unless the operator allowed it for this (trusted) service: a preview
    of the same service does not get the rule. (Public targets: see tests/security, pure policy.)"""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f"host-side{self.path}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    try:
        (app_dir / "egress_client.py").write_text(EGRESS_CLIENT)
        port = server.server_address[1]
        backend = make_backend(network=NetworkMode.NAMESPACE, egress_allow={"web": [f"127.0.0.1/32:{port}"]})
        spec = spec_for(app_dir, commands=(f"python3 egress_client.py {port}",), trusted=trusted)
        backend.create(spec)
        wait_status(backend, spec.replica_id, ReplicaStatus.EXITED)
        lines = [x for x in backend.logs(spec.replica_id) if x.startswith("EGRESS ")]
        assert lines == [expected], backend.logs(spec.replica_id)[-4:]
    finally:
        server.shutdown()
        server.server_close()


def test_delete_right_after_create_leaves_no_sandbox_behind(make_backend: Factory, app_dir: Path) -> None:
    """A stop that lands while the sandbox is still starting (its app not yet exec'd, so not yet
    marked) must still end every process of it, bwrap included."""
    from backends.local.proc import sandbox_processes

    backend = make_backend(grace=1.0)
    for ordinal in range(4):
        spec = spec_for(app_dir, ordinal=ordinal)
        backend.create(spec)
        backend.delete(spec.replica_id)
        replica_dir = str(backend.root / spec.replica_id)
        assert marked_processes(replica_dir) == [] and sandbox_processes(replica_dir) == []
