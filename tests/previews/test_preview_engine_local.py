"""Previews end to end through the real engine and the local backend, from a real bare remote:
open PR -> preview up and answering with the PR's files, push -> the preview rolls to the new head,
close -> the preview is gone; a fork PR never gets one. The provider is the engine's `extension`,
as `tidegate up --previews` wires it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from backends.base import BackendRegistry
from backends.local.backend import LocalBackend
from reconciler.engine.reconcile import Engine, EngineSettings, Snapshot
from reconciler.previews.decision import PreviewSettings, PullRequestInfo, PullRequestState, RejectReason
from reconciler.previews.loop import PreviewProvider
from reconciler.previews.pr_source import PullRequestSource, read_decision, record_pull_request
from reconciler.source.checkout import GitSource
from reconciler.state.store import StateStore
from tests.support.git_repo import make_remote, open_pr
from tidegate.routes_io import read_snapshot

pytestmark = pytest.mark.slow

SERVICE = """\
type: service
name: web
commands:
  - python3 -m http.server 8000 --bind 127.0.0.1
port: 8000
"""


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Engine, LocalBackend, GitSource, PreviewProvider, Path]]:
    bare, work = make_remote(tmp_path, {"web.dstack.yml": SERVICE, "index.html": "production\n"})
    state = tmp_path / "state"
    owner = StateStore(state).installation().id
    backend = LocalBackend(state / "replicas", owner=owner, grace=2.0)
    eng = Engine(
        state, BackendRegistry({"local": backend}), EngineSettings(drain_min=0.0, probe_timeout=1.0)
    )
    branch = GitSource(str(bare), "main", state)
    provider = PreviewProvider(
        PullRequestSource.beside(branch), PreviewSettings(enabled=True), "main",
        salt=eng.installation.salt, backends=eng.backends,
    )
    eng.extension = provider
    try:
        yield eng, backend, branch, provider, work
    finally:
        eng.close()
        for info in backend.list_owned():
            backend.delete(info.replica_id)
        assert backend.list_owned() == []


def settle(
    eng: Engine, provider: PreviewProvider, branch: GitSource, want: dict[str, str | None], deadline: float = 60.0
) -> dict[str, str]:
    """Run passes until each named route serves the expected page (None: the route is gone)."""
    end = time.monotonic() + deadline
    pages: dict[str, str] = {}
    while time.monotonic() < end:
        checkout = branch.current()
        provider.refresh(checkout, time.time())
        eng.reconcile(Snapshot(checkout.revision, checkout.root, checkout.config_path))
        routes = read_snapshot(eng.state_dir).services
        pages = {}
        for name in want:
            route = routes.get(name)
            ready = [u for u in route.upstreams if not u.draining] if route else []
            if ready:
                sock = ready[0].url.removeprefix("unix://")
                with httpx.Client(transport=httpx.HTTPTransport(uds=sock), timeout=5) as c:
                    pages[name] = c.get("http://replica/index.html").text
        if all((pages.get(n) == text) if text is not None else (n not in routes) for n, text in want.items()):
            return pages
        time.sleep(0.2)
    raise AssertionError(f"routes never settled to {want}: got {pages}; status {eng.status()}")


def test_preview_lifecycle(setup: tuple[Engine, LocalBackend, GitSource, PreviewProvider, Path]) -> None:
    eng, backend, branch, provider, work = setup
    settle(eng, provider, branch, {"web": "production\n"})

    v2 = SERVICE + "env:\n  - VERSION=2\n"
    sha1 = open_pr(work, 7, {"web.dstack.yml": v2, "index.html": "pr 7 first\n"})
    settle(eng, provider, branch, {"web": "production\n", "web-pr-7": "pr 7 first\n"})
    route = read_snapshot(eng.state_dir).services["web-pr-7"]
    assert route.host == "web-pr-7.localhost"
    assert provider.preview_prs() == {"web-pr-7": 7}
    assert route.preview_pr == 7 and read_snapshot(eng.state_dir).services["web"].preview_pr is None
    [preview] = [s for s in eng.status() if s.name == "web-pr-7"]
    assert preview.revision == sha1
    assert read_decision(eng.state_dir)["previews"][0]["head_sha"] == sha1

    # A push to the PR (code only, same config) rolls the preview to the new head; production stays.
    sha2 = open_pr(work, 7, {"web.dstack.yml": v2, "index.html": "pr 7 second\n"})
    settle(eng, provider, branch, {"web": "production\n", "web-pr-7": "pr 7 second\n"})
    [preview] = [s for s in eng.status() if s.name == "web-pr-7"]
    assert preview.revision == sha2

    # A fork PR: no preview, the reason recorded.
    sha9 = open_pr(work, 9, {"web.dstack.yml": SERVICE + "auth: false\n", "index.html": "fork\n"})
    record_pull_request(eng.state_dir, PullRequestInfo(9, sha9, fork=True, labels=()))
    # Closing #7 (the ref stays, as on GitHub; the webhook record says closed): torn down.
    record_pull_request(eng.state_dir, PullRequestInfo(7, sha2, state=PullRequestState.CLOSED, fork=False))
    settle(eng, provider, branch, {"web": "production\n", "web-pr-7": None, "web-pr-9": None})
    reasons = {(r.pr, r.reason) for r in provider.decision.rejected}
    assert reasons == {(7, RejectReason.CLOSED), (9, RejectReason.FORK)}
    assert provider.preview_prs() == {}
    assert [i.service for i in backend.list_owned()] == ["web"]
