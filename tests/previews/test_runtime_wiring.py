"""Previews wired into the running reconciler (fast): `runtime.build_previews` + `runtime.Pass` + the
engine's extension, over a real bare remote with `refs/pull/<N>/head`, a recording backend, and the
local stand-in for the GitHub REST API (statuses land there).

Covers the call sites the loop makes: a `wake` signal carrying a webhook's PR is saved, previews are
refreshed after a fetch and join the desired set, routes carry `preview_pr` and the renamed model,
commit statuses go to the PR head (previews) and to the deployed commit (production), and an empty
production config neither prunes production nor lets previews stand in for it.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from previews_support import (
    REPO,
    TOKEN,
    FakeGitHub,
    event,
    pull_request,
    serve_github,
)

from backends.base import BackendRegistry
from reconciler.cli import runtime
from reconciler.cli.settings import Settings, SettingsError, build_settings
from reconciler.engine.reconcile import Engine, EngineSettings
from reconciler.previews.pr_source import read_decision
from reconciler.source.checkout import GitSource, make_source
from tests.reconciler.fakes import FakeBackend, FakeProber
from tests.support.git_repo import commit, git, make_remote, open_pr
from tidegate.routes_io import read_snapshot

WEB = """\
type: service
name: web
commands:
  - python3 -m http.server 8000
port: 8000
model:
  type: chat
  name: chat
  format: openai
"""


class World:
    def __init__(self, tmp: Path, gh: FakeGitHub, api_url: str, **env: str) -> None:
        self.bare, self.work = make_remote(tmp, {"web.dstack.yml": WEB, "README.md": "configs\n"})
        self.gh = gh
        self.signals: list[dict[str, Any]] = []
        environ = {"TIDEGATE_GITHUB_TOKEN": TOKEN, "TIDEGATE_GITHUB_REPO": REPO, "TIDEGATE_GITHUB_API": api_url, **env}
        args = argparse.Namespace(repo=str(self.bare), state=str(tmp / "state"), previews=True, listen="127.0.0.1:9999")
        self.settings = build_settings(args, environ)
        self.source = make_source(self.settings.repo or "", "main", self.settings.state_dir, None, False)
        self.backend = FakeBackend()
        self.engine = Engine(
            self.settings.state_dir, BackendRegistry({"local": self.backend}), EngineSettings(drain_min=0),
            prober=FakeProber(),
        )
        provider = runtime.build_previews(self.settings, args, self.source, self.engine)
        assert provider is not None
        self.engine.extension = provider
        self.the_pass = runtime.Pass(
            self.engine, self.source, self.take, previews=provider,
            deploy_reporter=runtime.build_deploy_reporter(self.settings), status_url=self.settings.gateway_url,
        )

    def take(self) -> list[dict[str, Any]]:
        out, self.signals = self.signals, []
        return out

    def run(self, passes: int = 3) -> None:
        for _ in range(passes):
            self.the_pass.request_fetch()
            self.the_pass()

    def statuses(self, sha: str, context: str) -> list[str]:
        return [body["state"] for s, body in self.gh.statuses if s == sha and body["context"] == context]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with serve_github() as (gh, client):
        w = World(tmp_path, gh, client.settings.api_url)
        try:
            yield w
        finally:
            w.engine.close()


def test_previews_join_the_pass_routes_and_statuses(world: World) -> None:
    w = world
    w.run()
    main_sha = git(w.work, "rev-parse", "HEAD")
    assert w.backend.running("web") and not w.backend.running("web-pr-7")
    # The deployed commit: pending while the replica starts, then success linking the gateway.
    assert w.statuses(main_sha, "tidegate")[-1] == "success"
    assert [b["target_url"] for s, b in w.gh.statuses if s == main_sha][-1] == "http://127.0.0.1:9999"

    sha = open_pr(w.work, 7, {"web.dstack.yml": WEB + "env:\n  - VERSION=2\n"})
    pr = pull_request(7, sha=sha)
    w.gh.pulls[7] = pr
    w.signals.append({"kind": "wake", "source": "github", "event": "pull_request", "pr": 7, "pull_request": pr})
    w.run()
    routes = read_snapshot(w.settings.state_dir).services
    assert routes["web-pr-7"].preview_pr == 7 and routes["web"].preview_pr is None
    assert routes["web-pr-7"].host == "web-pr-7.localhost"
    assert routes["web-pr-7"].model is not None and routes["web-pr-7"].model.name == "chat@pr-7"
    assert routes["web-pr-7"].upstreams
    assert w.statuses(sha, "tidegate/preview")[-1] == "success"
    [preview] = read_decision(w.settings.state_dir)["previews"]
    assert (preview["name"], preview["head_sha"]) == ("web-pr-7", sha)

    # A webhook saying the PR closed (the API agrees): the preview is pruned, production stays.
    closed = pull_request(7, sha=sha, state="closed")
    w.gh.pulls[7] = closed
    w.signals.append({"kind": "wake", "event": "pull_request", "pr": 7, "pull_request": event("closed", closed)["pull_request"]})
    w.run()
    assert w.backend.running("web-pr-7") == [] and w.backend.running("web")
    assert "web-pr-7" not in read_snapshot(w.settings.state_dir).services


def test_an_empty_production_config_keeps_production_and_previews(world: World) -> None:
    w = world
    sha = open_pr(w.work, 7, {"web.dstack.yml": WEB + "replicas: 1\nenv:\n  - VERSION=2\n"})
    w.gh.pulls[7] = pull_request(7, sha=sha)
    w.run()
    assert w.backend.running("web") and w.backend.running("web-pr-7")
    commit(w.work, {"web.dstack.yml": None}, "remove every config")
    git(w.work, "push", "-q", "origin", "main")
    w.run()
    # Without --allow-empty nothing is pruned: not production, and previews are not what is left.
    assert w.backend.running("web") and w.backend.running("web-pr-7")
    assert w.backend.deletes() == []


@pytest.mark.parametrize(
    ("section", "cli", "enabled"),
    [
        pytest.param("", False, False, id="off-by-default"),
        pytest.param("previews:\n  enabled: true\n  max_concurrent: 2\n", False, True, id="settings-file"),
        pytest.param("previews:\n  max_concurrent: 2\n", True, True, id="cli-flag"),
    ],
)
def test_preview_settings_from_file_and_flag(tmp_path: Path, section: str, cli: bool, enabled: bool) -> None:
    bare, _ = make_remote(tmp_path, {"web.dstack.yml": WEB})
    settings_file = tmp_path / "settings.yml"
    settings_file.write_text("webhook_secret: from-file\n" + section)
    args = argparse.Namespace(repo=str(bare), state=str(tmp_path / "state"), settings=str(settings_file), previews=cli)
    settings = build_settings(args, {})
    assert settings.webhook_secret == "from-file"
    assert build_settings(args, {"TIDEGATE_WEBHOOK_SECRET": "env"}).webhook_secret == "env"
    engine = runtime.build_engine(settings)  # the cloud part of the file parses without our keys
    try:
        source = GitSource(str(bare), "main", settings.state_dir)
        provider = runtime.build_previews(settings, args, source, engine)
        assert (provider is not None) is enabled
        if provider is not None and section:
            assert provider.settings.max_concurrent == 2
            assert provider.github is None  # no token configured: no API, no statuses
    finally:
        engine.close()


def test_previews_refuse_a_watched_folder_and_bad_settings(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    settings = Settings(state_dir=tmp_path / "state", repo=str(tmp_path / "repo"), watch=True)
    engine = runtime.build_engine(settings)
    try:
        source = make_source(str(tmp_path / "repo"), "main", settings.state_dir, None, True)
        with pytest.raises(runtime.RuntimeError_, match="previews need a git remote"):
            runtime.build_previews(settings, argparse.Namespace(previews=True), source, engine)
        bad = Settings(state_dir=settings.state_dir, previews_section={"ttl_hours": 3})
        with pytest.raises(runtime.RuntimeError_, match="unknown previews setting"):
            runtime.build_previews(bad, None, source, engine)
    finally:
        engine.close()
    broken = tmp_path / "broken.yml"
    broken.write_text("previews: [1, 2]\n")
    with pytest.raises(SettingsError, match="previews: expected a mapping"):
        build_settings(argparse.Namespace(settings=str(broken)), {})


def test_a_failing_status_api_is_left_alone_for_a_while(world: World) -> None:
    w = world
    now = [1000.0]
    w.the_pass.clock = lambda: now[0]
    w.the_pass.fetch_every = 1e9  # one fetch (and one API listing of PRs), then only statuses
    w.the_pass()  # starts the replica: "pending" posted
    sha = git(w.work, "rev-parse", "HEAD")
    assert w.statuses(sha, "tidegate") == ["pending"]
    w.gh.fail_next = 502  # the "success" post fails
    w.the_pass()
    posts = [r for r in w.gh.requests if r[0] == "POST"]
    assert len(posts) == 2 and w.statuses(sha, "tidegate") == ["pending"]
    for _ in range(3):  # passes keep reconciling, but do not wait on GitHub again
        w.the_pass()
    assert [r for r in w.gh.requests if r[0] == "POST"] == posts
    now[0] += w.the_pass.status_retry_after
    w.the_pass()
    assert w.statuses(sha, "tidegate") == ["pending", "success"]
