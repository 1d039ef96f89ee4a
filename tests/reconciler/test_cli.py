"""The runtime commands, in-process: settings precedence, plan exit codes and output, ps, stop/start
against a held state dir, next-step hints, the quickstart repo. Real git repos; no replica is started
(plan never starts anything; stop/start only edit state)."""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import pytest

from reconciler.cli.commands import new_lines
from reconciler.cli.main import build_parser, main
from reconciler.cli.next_steps import print_next_steps
from reconciler.cli.quickstart import local_examples, sync_repo
from reconciler.cli.settings import Settings, SettingsError, build_settings
from reconciler.state.records import ServiceRecord, StateDoc
from reconciler.state.store import StateStore
from tidegate.routes import ModelRoute, RoutesSnapshot, ServiceRoute, Upstream
from tidegate.routes_io import write_snapshot
from tidegate.signals import drain_signals

SERVICE = """\
type: service
name: {name}
env:
  - GREETING={greeting}
  - API_KEY
commands:
  - python3 -m http.server 8000
port: 8000
auth: false
backends: [local]
resources:
  cpu: 1..
  memory: 64MB..
  disk: 1GB..
"""


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    work = tmp_path / "repo"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    (work / "web.dstack.yml").write_text(SERVICE.format(name="web", greeting="hi"))
    git(work, "add", "-A")
    git(work, "commit", "-qm", "web")
    return work


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize(
    ("argv", "environ", "expect"),
    [
        pytest.param(["ps"], {}, "state", id="default-./state"),
        pytest.param(["ps"], {"TIDEGATE_STATE": "/srv/tg"}, "/srv/tg", id="env"),
        pytest.param(["ps", "--state", "/opt/x"], {"TIDEGATE_STATE": "/srv/tg"}, "/opt/x", id="flag-wins"),
    ],
)
def test_state_dir_is_found_the_same_way_everywhere(
    argv: list[str], environ: dict[str, str], expect: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = build_settings(parse(*argv), environ)
    assert settings.state_dir == (tmp_path / expect if expect == "state" else Path(expect))


def test_env_file_overlays_the_environment_and_is_never_shown(tmp_path: Path) -> None:
    env_file = tmp_path / "secrets.env"
    env_file.write_text("API_KEY=sk-very-secret\n")
    args = parse("plan", "--repo", str(tmp_path), "--env-file", str(env_file), "--listen", "127.0.0.1:9999")
    settings = build_settings(args, {"API_KEY": "from-env", "OTHER": "1"})
    assert settings.env["API_KEY"] == "sk-very-secret" and settings.env["OTHER"] == "1"
    assert "sk-very-secret" not in repr(settings)
    assert settings.repo == str(tmp_path.resolve())
    assert settings.listen_port == 9999 and settings.service_url("web") == "http://web.localhost:9999"


def test_ready_timeout_defaults_generously_and_reaches_the_engine(tmp_path: Path) -> None:
    from reconciler.cli.runtime import build_engine

    assert build_settings(parse("up", "--repo", str(tmp_path)), {}).ready_timeout == 1800.0
    settings = build_settings(parse("up", "--repo", str(tmp_path), "--ready-timeout", "42", "--state", str(tmp_path / "s")), {})
    engine = build_engine(settings, read_only=True)
    try:
        assert engine.settings.ready_timeout == 42.0
    finally:
        engine.close()
    with pytest.raises(SettingsError):
        build_settings(parse("up", "--repo", str(tmp_path), "--ready-timeout", "-1"), {})


def test_plan_exit_codes_and_output(repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    env = tmp_path / "e.env"
    env.write_text("API_KEY=sk-very-secret\n")
    base = ["plan", "--repo", str(repo), "--state", str(state), "--env-file", str(env)]

    assert main(base) == 2  # a new service: changes
    text = capsys.readouterr().out
    assert "+ web: create" in text and "Plan: 1 to create, 0 to change, 0 to delete." in text
    assert "sk-very-secret" not in text

    assert main([*base, "--json"]) == 2
    data = json.loads(capsys.readouterr().out)
    assert data["services"]["web"]["action"] == "create" and data["exit_code"] == 2
    assert "sk-very-secret" not in json.dumps(data)

    (repo / "web.dstack.yml").write_text("type: service\nname: web\nport: [\n")
    git(repo, "commit", "-qam", "broken")
    assert main(base) == 1  # a config with errors
    assert "error" in capsys.readouterr().out


def test_plan_without_repo_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--state", str(tmp_path)]) == 1
    assert "needs --repo" in capsys.readouterr().err


def _deployed(state: Path, name: str = "web") -> StateStore:
    store = StateStore(state)
    store.acquire()
    doc: StateDoc = store.load()
    doc.services[name] = ServiceRecord(name=name, spec_hash="abc", desired_count=1)
    store.save(doc)
    return store


def test_stop_start_take_the_lock_when_nobody_holds_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _deployed(tmp_path).release()
    assert main(["stop", "web", "--state", str(tmp_path)]) == 0
    assert StateStore(tmp_path).load().services["web"].stopped
    assert main(["start", "web", "--state", str(tmp_path)]) == 0
    assert not StateStore(tmp_path).load().services["web"].stopped
    assert main(["stop", "nope", "--state", str(tmp_path)]) == 1
    assert "unknown service 'nope'" in capsys.readouterr().err


def test_stop_asks_a_running_up_through_a_signal_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = _deployed(tmp_path)  # this test process plays the running `up`
    try:
        assert main(["stop", "web", "--state", str(tmp_path)]) == 0
        assert "asked the running tidegate" in capsys.readouterr().out
        assert [(s["kind"], s["service"]) for s in drain_signals(tmp_path)] == [("stop", "web")]
        assert not StateStore(tmp_path).load().services["web"].stopped  # the owner applies it, not the CLI
    finally:
        store.release()


def test_ps_plain_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ps", "--state", str(tmp_path)]) == 0
    assert "no services deployed yet" in capsys.readouterr().out
    _deployed(tmp_path).release()
    assert main(["ps", "--state", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["SERVICE", "REVISION", "READY", "URL", "STATUS", "REASON", "SCALING", "COST"]
    assert "\x1b[" not in out  # plain when not a TTY
    assert main(["ps", "--json", "--state", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["services"][0]["name"] == "web"


def test_logs_of_an_unknown_service(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["logs", "nope", "--state", str(tmp_path)]) == 1
    assert "no replicas for service 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("previous", "current", "expect"),
    [
        pytest.param([], ["a", "b"], ["a", "b"], id="first"),
        pytest.param(["a", "b"], ["a", "b"], [], id="nothing-new"),
        pytest.param(["a", "b"], ["b", "c", "d"], ["c", "d"], id="window-slid"),
        pytest.param(["a", "b"], ["x", "y"], ["x", "y"], id="rotated"),
    ],
)
def test_follow_prints_only_new_lines(previous: list[str], current: list[str], expect: list[str]) -> None:
    assert new_lines(previous, current) == expect


def test_next_steps_name_urls_token_curl_and_sdk(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_snapshot(
        tmp_path,
        RoutesSnapshot(
            services={
                "chat": ServiceRoute(
                    name="chat",
                    host="chat.localhost",
                    upstreams=(Upstream(replica_id="chat-1-0", url="unix:///x.sock"),),
                    model=ModelRoute(name="tidegate/echo"),
                )
            }
        ),
    )
    print_next_steps(Settings(state_dir=tmp_path, listen="127.0.0.1:8080"), gateway=True)
    out = capsys.readouterr().out
    assert "http://chat.localhost:8080" in out
    assert "tidegate token create" in out
    assert "curl -s http://127.0.0.1:8080/v1/chat/completions" in out and "tidegate/echo" in out
    assert "openai.OpenAI(base_url='http://127.0.0.1:8080/v1'" in out


def test_next_steps_for_a_later_service_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    routes = {
        name: ServiceRoute(name=name, host=f"{name}.localhost", upstreams=(Upstream(replica_id=f"{name}-1-0", url="unix:///x.sock"),))
        for name in ("chat", "web")
    }
    write_snapshot(tmp_path, RoutesSnapshot(services=routes))
    print_next_steps(Settings(state_dir=tmp_path, listen="127.0.0.1:8080"), gateway=True, only=frozenset({"web"}))
    out = capsys.readouterr().out
    assert out.strip().splitlines() == ["Ready: web              http://web.localhost:8080  (1 ready)"]


def test_quickstart_repo_holds_only_local_examples_and_commits_changes(tmp_path: Path) -> None:
    examples = tmp_path / "examples"
    for name in ("local-chat", "tgi-mistral"):
        (examples / name).mkdir(parents=True)
        (examples / name / ".dstack.yml").write_text(f"name: {name}\n")
    (examples / "servers").mkdir()
    (examples / "servers" / "s.py").write_text("print(1)\n")
    assert [p.name for p in local_examples(examples)] == ["local-chat", "servers"]

    repo = tmp_path / "qs"
    sha, committed = sync_repo(examples, repo)
    assert committed and (repo / "examples/local-chat/.dstack.yml").exists()
    assert not (repo / "examples/tgi-mistral").exists()
    assert sync_repo(examples, repo) == (sha, False)  # unchanged: no new commit
    (examples / "local-chat" / ".dstack.yml").write_text("name: local-chat\n# edited\n")
    sha2, committed2 = sync_repo(examples, repo)
    assert committed2 and sha2 != sha


@pytest.mark.parametrize(
    ("https", "expect"),
    [
        pytest.param("0.0.0.0:443", "https://web.example.org", id="443-hidden"),
        pytest.param("127.0.0.1:8443", "https://web.example.org:8443", id="other-port"),
    ],
)
def test_up_with_https_listener_shows_https_urls(tmp_path: Path, https: str, expect: str) -> None:
    args = parse("up", "--repo", str(tmp_path), "--domain", "example.org", "--https-listen", https, "--acme-email", "ops@example.org")
    settings = build_settings(args, {})
    assert settings.service_url("web") == expect
    assert settings.gateway_options["acme_email"] == "ops@example.org"


def test_up_tls_option_error_is_a_settings_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="need --https-listen"):
        build_settings(parse("up", "--repo", str(tmp_path), "--acme-email", "ops@example.org"), {})
