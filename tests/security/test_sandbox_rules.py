"""The sandbox's rules that need no attacker: its argv, the uid choice, GPU devices, life without bwrap.

The argv is checked as data (what is bound, what is not, no user namespace); the no-bwrap rules run
a real local backend whose sandbox probe is made to fail: a preview is refused with the reason (the
reconciler shows it in `ps`), a trusted service runs and says loudly, in its log, that it is not
sandboxed.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from backends.base import BackendRegistry, GpuRequirement, ReplicaSpec, Requirements
from backends.local import sandbox as local_sandbox
from backends.local.backend import LocalBackend, NetworkMode, SandboxMode
from backends.local.layout import ReplicaPaths
from backends.local.sandbox import SandboxPlan, SandboxTools, bwrap_argv, replica_uid, root_layout

TOOLS = SandboxTools(bwrap="/usr/bin/bwrap", setpriv="/usr/bin/setpriv")
APP = "from http.server import *\nHTTPServer(('127.0.0.1', 8000), SimpleHTTPRequestHandler).serve_forever()\n"


def plan(tmp_path: Path, **kwargs: object) -> SandboxPlan:
    replica = tmp_path / "state" / "replicas" / "web-1-0"
    return SandboxPlan(
        tools=TOOLS, uid=replica_uid("web"), work=replica / "work", home=replica / "home",
        script=replica / "run.sh", marks=(("TIDEGATE_REPLICA", "web-1-0"),), **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip


def pairs(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_only_the_replicas_own_dirs_are_writable_and_nothing_of_the_state_dir_is_bound(tmp_path: Path) -> None:
    p = plan(tmp_path, venv=tmp_path / "state" / "replicas" / ".venvs" / "abc-py3.11")
    argv = bwrap_argv(p, root_layout())
    assert pairs(argv, "--bind") == [str(p.work), str(p.home), str(p.venv)]
    assert pairs(argv, "--ro-bind") == ["/usr", "/etc", str(p.script)]
    assert pairs(argv, "--tmpfs") == ["/tmp", "/var/tmp"] and pairs(argv, "--proc") == ["/proc"]
    assert "--unshare-pid" in argv and "--die-with-parent" in argv
    # No user namespace (its uid would map back to host root) and no second network namespace.
    assert not {"--unshare-user", "--userns", "--unshare-all", "--unshare-net", "--share-net"} & set(argv)
    setpriv = argv[argv.index("--") + 1 :]
    assert setpriv[:5] == [TOOLS.setpriv, "--reuid", str(p.uid), "--regid", str(p.uid)]
    assert {"--clear-groups", "--inh-caps=-all", "--bounding-set=-all"} <= set(setpriv)


def test_gpu_devices_only_when_asked_for(tmp_path: Path) -> None:
    assert pairs(bwrap_argv(plan(tmp_path), []), "--dev-bind") == []
    gpu = bwrap_argv(plan(tmp_path, devices=("/dev/nvidia0", "/dev/nvidiactl")), [])
    assert pairs(gpu, "--dev-bind") == ["/dev/nvidia0", "/dev/nvidiactl"]


def test_the_backend_binds_gpus_for_gpu_services_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if local_sandbox.probe(local_sandbox.find_tools()) is not None:
        pytest.skip("no replica sandbox on this machine")
    monkeypatch.setattr(local_sandbox, "gpu_devices", lambda: ("/dev/nvidia0",))
    backend = LocalBackend(tmp_path / "replicas", "me")
    for gpu, expected in ((None, []), (GpuRequirement(names=("A100",)), ["/dev/nvidia0"])):
        spec = ReplicaSpec("web-1-0", "web", "1", 0, 8000, requirements=Requirements(gpu=gpu))
        paths = ReplicaPaths(backend.root, spec.replica_id)
        paths.work.mkdir(parents=True, exist_ok=True)
        argv, uid = backend._sandbox_for(spec, paths, None)
        assert pairs(list(argv), "--dev-bind") == expected and uid == replica_uid("web")


def test_uids_are_per_service_and_never_root() -> None:
    uids = {replica_uid(f"svc-{i}") for i in range(2000)}
    assert min(uids) >= local_sandbox.UID_BASE and len(uids) > 1990
    assert replica_uid("web") == replica_uid("web") != replica_uid("web-pr-1")


def test_a_venv_base_outside_usr_is_bound_read_only(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / "pyvenv.cfg").write_text("home = /root/.pyenv/versions/3.11.7/bin\nversion = 3.11.7\n")
    prefix = local_sandbox.venv_base_prefix(venv)
    argv = local_sandbox.with_venv_base(bwrap_argv(plan(tmp_path), []), prefix)
    assert "/root/.pyenv/versions/3.11.7" in pairs(argv, "--ro-bind")
    assert "/root" in pairs(argv, "--dir")  # made 0755, or the uid could not reach the interpreter
    usr = local_sandbox.with_venv_base(bwrap_argv(plan(tmp_path), []), Path("/usr"))
    assert usr == bwrap_argv(plan(tmp_path), [])


def test_a_replica_rewriting_its_pyvenv_cfg_chooses_nothing(tmp_path: Path) -> None:
    """The venv is the replica's to write; what gets bound comes from the record the supervisor made
    beside the venv (outside it) when it built it."""
    venv = tmp_path / ".venvs" / "abc-py3.11"
    venv.mkdir(parents=True)
    local_sandbox.venv_base_file(venv).write_text("/root/.pyenv/versions/3.11.7\n")
    (venv / "pyvenv.cfg").write_text(f"home = {tmp_path / 'state'}/bin\n")  # the replica's edit
    argv = local_sandbox.with_venv_base(bwrap_argv(plan(tmp_path), []), local_sandbox.recorded_venv_base(venv))
    assert str(tmp_path / "state") not in pairs(argv, "--ro-bind")
    assert "/root/.pyenv/versions/3.11.7" in pairs(argv, "--ro-bind")


def hide_bwrap(monkeypatch: pytest.MonkeyPatch) -> None:
    real = shutil.which
    monkeypatch.setattr(local_sandbox.shutil, "which", lambda name: None if name == "bwrap" else real(name))


@pytest.fixture
def without_bwrap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalBackend]:
    hide_bwrap(monkeypatch)
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "app.py").write_text(APP)
    backend = LocalBackend(tmp_path / "replicas", "me", grace=1.0, network=NetworkMode.AUTO)
    try:
        yield backend
    finally:
        for info in backend.list_owned():
            backend.delete(info.replica_id)


def spec(tmp_path: Path, service: str, trusted: bool) -> ReplicaSpec:
    return ReplicaSpec(
        f"{service}-1-0", service, "1", 0, 8000, commands=("exec python3 app.py",),
        workdir=str(tmp_path / "repo"), trusted=trusted,
    )  # fmt: skip


def test_without_bwrap_a_preview_is_refused_with_the_reason(tmp_path: Path, without_bwrap: LocalBackend) -> None:
    from reconciler.engine.desired import DesiredService, DesiredSet
    from reconciler.engine.offers import with_offers
    from reconciler.state.records import RouteInfo

    preview = spec(tmp_path, "web-pr-1", trusted=False)
    reason = without_bwrap.can_run(preview)
    assert reason is not None and "outside the sandbox" in reason and "bwrap not found" in reason
    assert "apt-get install -y bubblewrap" in reason
    # The reason the reconciler records for the service (what `tidegate ps` shows as blocked).
    desired = DesiredService(
        name="web-pr-1", spec_hash="1", config_path="web.dstack.yml", backend="local",
        min_replicas=1, max_replicas=1, scaling=None, template=preview, route=RouteInfo(host="web-pr-1.localhost"),
    )  # fmt: skip
    ds, _ = with_offers(DesiredSet(services={"web-pr-1": desired}), BackendRegistry({"local": without_bwrap}))
    assert ds.blocked == {"web-pr-1": reason} and not ds.services


def test_without_bwrap_a_trusted_service_runs_and_says_so(
    tmp_path: Path, without_bwrap: LocalBackend, caplog: pytest.LogCaptureFixture
) -> None:
    trusted = spec(tmp_path, "web", trusted=True)
    assert without_bwrap.can_run(trusted) is None
    with caplog.at_level(logging.WARNING, logger="tidegate.local"):
        info = without_bwrap.create(trusted)
    assert "WITHOUT the replica sandbox" in caplog.text
    assert any("WARNING" in line and "WITHOUT the replica sandbox" in line for line in without_bwrap.logs(info.replica_id))
    assert info.address is not None
    transport = httpx.HTTPTransport(uds=info.address.removeprefix("unix://"))
    deadline = time.monotonic() + 20  # a bound for a loaded machine, not a speed assertion
    with httpx.Client(transport=transport, timeout=5) as client:
        while True:
            try:
                assert client.get("http://replica/app.py").status_code == 200
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the unsandboxed replica never answered"
                time.sleep(0.05)


def test_sandbox_required_refuses_even_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hide_bwrap(monkeypatch)
    backend = LocalBackend(tmp_path / "replicas", "me", sandbox=SandboxMode.REQUIRED)
    reason = backend.can_run(spec(tmp_path, "web", trusted=True))
    assert reason is not None and "bubblewrap" in reason


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param("egress:\n  allow:\n    web: ['10.0.0.0/8', '[fd00::/8]:443']\nsandbox: required\n", None, id="ok"),
        pytest.param("egress:\n  allow:\n    web: ['db.internal:5432']\n", "egress.allow.web: bad egress rule", id="a-name"),
        pytest.param("egress:\n  deny: {}\n", "one key, allow", id="unknown-key"),
        pytest.param("egress:\n  allow:\n    web: '10.0.0.0/8'\n", "expected a list", id="not-a-list"),
        pytest.param("sandbox: maybe\n", "sandbox: expected one of auto, required, off", id="bad-mode"),
    ],
)
def test_the_settings_file_shapes_egress_and_sandbox(tmp_path: Path, text: str, problem: str | None) -> None:
    import argparse

    from reconciler.cli.settings import SettingsError, build_settings

    path = tmp_path / "settings.yml"
    path.write_text(text)
    args = argparse.Namespace(settings=str(path), state=str(tmp_path / "state"))
    if problem is not None:
        with pytest.raises(SettingsError, match=problem):
            build_settings(args, {})
        return
    settings = build_settings(args, {})
    assert settings.egress_allow == {"web": ("10.0.0.0/8", "[fd00::/8]:443")} and settings.sandbox == "required"
    from reconciler.cli.runtime import build_registry

    local = build_registry(settings, "me").get("local")
    assert isinstance(local, LocalBackend) and local.sandbox == SandboxMode.REQUIRED
    assert [str(r) for r in local.egress_allow["web"]] == ["10.0.0.0/8", "[fd00::/8]:443"]
