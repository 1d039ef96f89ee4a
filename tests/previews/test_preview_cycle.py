"""One preview pass as the loop runs it, over a real bare remote and a local GitHub API server:
open -> preview (pending, then success status), push -> new head, label removed / closed / fork ->
gone with the reason, API down -> saved records, and the decision published for `ps`."""

from __future__ import annotations

from pathlib import Path

import pytest
from previews_support import REPO, FakeGitHub, pull_request

from reconciler.config.loader import load_tree
from reconciler.previews.decision import (
    PreviewDecision,
    PreviewSettings,
    RejectReason,
    decide_previews,
    previews_by_pr,
)
from reconciler.previews.github import (
    CommitState,
    GitHubClient,
    StatusReporter,
    preview_status_updates,
    pull_request_from_webhook,
)
from reconciler.previews.pr_source import (
    PullRequestSource,
    collect,
    read_decision,
    read_pull_requests,
    write_decision,
)
from reconciler.source.checkout import GitSource
from tests.support.git_repo import make_remote, open_pr

NOW = 1_800_000_000.0
CHAT = "type: service\nname: chat\ncommands:\n  - python serve.py\nport: 8000\nenv:\n  - HF_TOKEN\n"
EMBED = "type: service\nname: embed\ncommands:\n  - python embed.py\nport: 8001\n"


def url_for(name: str) -> str:
    return f"http://{name}.localhost:8080"


class Cycle:
    """The preview half of a reconcile pass, wired the way the lead wires it into the loop."""

    def __init__(self, bare: Path, state: Path, client: GitHubClient | None, settings: PreviewSettings) -> None:
        self.branch = GitSource(str(bare), "main", state)
        self.prs = PullRequestSource.beside(self.branch)
        self.client = client
        self.reporter = StatusReporter(client) if client else None
        self.settings = settings
        self.state = state

    def run(self, now: float, ready: frozenset[str] | set[str] = frozenset()) -> tuple[PreviewDecision, list[str]]:
        base = load_tree(self.branch.current().root)
        snap = collect(self.prs, now, github=self.client, base_branch="main")
        decision = decide_previews(snap.prs, base, snap.loads, self.settings, now, watched_branch="main")
        write_decision(self.state, decision, now)
        if self.reporter is not None:
            errors = self.reporter.post(preview_status_updates(snap.prs, decision, ready, url_for))
            assert errors == []
        # Every preview's workdir is its PR's checkout.
        for number, (sha, _load) in previews_by_pr(decision).items():
            assert snap.checkouts[number].revision == sha
        return decision, snap.errors


@pytest.fixture
def remote(tmp_path: Path) -> tuple[Path, Path]:
    return make_remote(tmp_path, {"chat/.dstack.yml": CHAT, "embed/.dstack.yml": EMBED})


def test_lifecycle_with_github_api(
    remote: tuple[Path, Path], tmp_path: Path, github: tuple[FakeGitHub, GitHubClient]
) -> None:
    bare, work = remote
    gh, client = github
    cycle = Cycle(bare, tmp_path / "state", client, PreviewSettings(enabled=True, required_label="preview"))

    # Opened with the label: a preview of the changed service only, pending until it is ready.
    sha1 = open_pr(work, 7, {"chat/.dstack.yml": CHAT.replace("serve.py", "serve.py --v2")})
    gh.pulls[7] = pull_request(7, sha=sha1, labels=("preview",))
    decision, errors = cycle.run(NOW)
    assert errors == []
    (p,) = decision.previews
    assert (p.name, p.head_sha, p.withheld_env) == ("chat-pr-7", sha1, ())  # same repo: secrets kept
    assert gh.statuses[-1] == (sha1, {
        "state": "pending", "description": "starting chat-pr-7", "context": "tidegate/preview",
        "target_url": url_for("chat-pr-7"),
    })
    cycle.run(NOW + 5, ready={"chat-pr-7"})
    assert gh.statuses[-1][1]["state"] == "success"
    posted = len(gh.statuses)
    cycle.run(NOW + 10, ready={"chat-pr-7"})
    assert len(gh.statuses) == posted  # nothing new to say: nothing posted

    # Pushed to: the new head is previewed (the engine rolls it since the spec hash moved).
    sha2 = open_pr(work, 7, {"chat/.dstack.yml": CHAT.replace("serve.py", "serve.py --v3")})
    gh.pulls[7] = pull_request(7, sha=sha2, labels=("preview",))
    decision, _ = cycle.run(NOW + 20)
    (p2,) = decision.previews
    assert p2.head_sha == sha2 and p2.loaded.spec_hash != p.loaded.spec_hash
    assert p2.expires_at == NOW + 20 + cycle.settings.ttl_seconds
    assert gh.statuses[-1][0] == sha2

    # Label removed: torn down, reason recorded.
    gh.pulls[7] = pull_request(7, sha=sha2, labels=())
    decision, _ = cycle.run(NOW + 30)
    assert decision.previews == []
    assert [(r.pr, r.reason) for r in decision.rejected] == [(7, RejectReason.MISSING_LABEL)]

    # Closed: the ref stays on GitHub, the API's open list says it is gone.
    gh.pulls[7] = pull_request(7, state="closed", sha=sha2, labels=("preview",))
    decision, _ = cycle.run(NOW + 40)
    assert decision.previews == []
    assert [r.reason for r in decision.rejected] == [RejectReason.CLOSED]
    published = read_decision(tmp_path / "state")
    assert published["previews"] == [] and published["rejected"][0]["reason"] == "closed"


def test_fork_gets_no_preview_and_a_failing_status(
    remote: tuple[Path, Path], tmp_path: Path, github: tuple[FakeGitHub, GitHubClient]
) -> None:
    bare, work = remote
    gh, client = github
    cycle = Cycle(bare, tmp_path / "state", client, PreviewSettings(enabled=True))
    sha = open_pr(work, 9, {"embed/.dstack.yml": EMBED.replace("embed.py", "embed.py --x")})
    gh.pulls[9] = pull_request(9, sha=sha, head_repo="stranger/models", head_fork=True)
    decision, _ = cycle.run(NOW)
    assert decision.previews == []
    assert [(r.pr, r.reason) for r in decision.rejected] == [(9, RejectReason.FORK)]
    sha_posted, body = gh.statuses[-1]
    assert (sha_posted, body["state"]) == (sha, str(CommitState.FAILURE))
    assert "fork" in body["description"]


def test_polling_alone_and_api_outage(
    remote: tuple[Path, Path], tmp_path: Path, github: tuple[FakeGitHub, GitHubClient]
) -> None:
    bare, work = remote
    gh, client = github
    state = tmp_path / "state"
    # No token at all: the ref counts as an open PR; unverified code gets no secrets.
    polling = Cycle(bare, state, None, PreviewSettings(enabled=True))
    sha = open_pr(work, 7, {"chat/.dstack.yml": CHAT.replace("serve.py", "serve.py --v2")})
    decision, _ = polling.run(NOW)
    (p,) = decision.previews
    assert p.withheld_env == ("HF_TOKEN",) and "HF_TOKEN" not in p.loaded.config.env

    # With the API: the record is saved; when the API is down next time, the saved record is used.
    gh.pulls[7] = pull_request(7, sha=sha, labels=("x",))
    with_api = Cycle(bare, state, client, PreviewSettings(enabled=True))
    decision, errors = with_api.run(NOW + 10)
    assert errors == [] and decision.previews[0].withheld_env == ()
    assert read_pull_requests(state)[7].labels == ("x",)
    gh.fail_next = 503
    decision, errors = with_api.run(NOW + 20)
    assert len(errors) == 1 and "503" in errors[0]
    assert [p.name for p in decision.previews] == ["chat-pr-7"] and decision.previews[0].withheld_env == ()


def test_verified_webhook_makes_the_pull_request_known(remote: tuple[Path, Path], tmp_path: Path) -> None:
    """A `pull_request` webhook the gateway verified makes the PR known at once (no API call)."""
    from reconciler.previews.pr_source import record_pull_request

    bare, work = remote
    state = tmp_path / "state"
    sha = open_pr(work, 7, {"chat/.dstack.yml": CHAT.replace("serve.py", "serve.py --v2")})
    info = pull_request_from_webhook("pull_request", {"pull_request": pull_request(7, state="closed", sha=sha)})
    assert info is not None and info.number == 7
    assert pull_request_from_webhook("push", {"ref": "refs/heads/main"}) is None
    record_pull_request(state, info)
    decision, _ = Cycle(bare, state, None, PreviewSettings(enabled=True)).run(NOW)
    assert decision.previews == [] and decision.rejected[0].reason == RejectReason.CLOSED
    assert REPO in (info.url or "")
