"""PR refs from a real bare remote: fetch `refs/pull/*/head`, snapshot a PR revision, see refs vanish."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.config.loader import load_tree
from reconciler.previews.decision import (
    PreviewSettings,
    PullRequestHead,
    PullRequestInfo,
    PullRequestState,
    RejectReason,
    combine,
    decide_previews,
)
from reconciler.previews.github import parse_pull_request_event
from reconciler.previews.pr_source import (
    PREVIEWS_DIR,
    PullRequestSource,
    PullSourceError,
    forget_pull_requests,
    read_pull_requests,
    record_pull_request,
)
from reconciler.source.checkout import GitSource
from tests.support.git_repo import commit, git, make_remote

NOW = 1_800_000_000.0

CHAT = "type: service\nname: chat\ncommands:\n  - python serve.py\nport: 8000\n"
CHAT_V2 = "type: service\nname: chat\ncommands:\n  - python serve.py --v2\nport: 8000\nmodel: llama\n"
EMBED = "type: service\nname: embed\ncommands:\n  - python embed.py\nport: 8001\n"


@pytest.fixture
def remote(tmp_path: Path) -> tuple[Path, Path]:
    """A bare remote whose main holds two services, and a working clone to push from."""
    return make_remote(tmp_path, {"chat/.dstack.yml": CHAT, "embed/.dstack.yml": EMBED})


def open_pr(work: Path, number: int, files: dict[str, str | None]) -> str:
    """What GitHub does when a PR is opened or pushed to: the head lands in refs/pull/<N>/head."""
    git(work, "checkout", "-q", "-B", f"pr-{number}", "main")
    sha = commit(work, files, f"pr {number}")
    git(work, "push", "-q", "--force", "origin", f"HEAD:refs/pull/{number}/head")
    git(work, "checkout", "-q", "main")
    return sha


def test_pr_ref_to_preview(remote: tuple[Path, Path], tmp_path: Path) -> None:
    bare, work = remote
    state = tmp_path / "state"
    branch = GitSource(str(bare), "main", state)
    base = branch.current()
    prs = PullRequestSource.beside(branch)
    assert prs.heads(NOW) == []

    sha = open_pr(work, 7, {"chat/.dstack.yml": CHAT_V2})
    (head,) = prs.heads(NOW)
    assert head == PullRequestHead(7, sha, NOW)
    assert git(bare, "rev-parse", "refs/pull/7/head") == sha

    checkout = prs.checkout(sha)
    assert checkout.revision == sha
    assert checkout.root == state / PREVIEWS_DIR / "revisions" / sha
    assert (checkout.root / "chat/.dstack.yml").read_text() == CHAT_V2
    assert prs.checkout(sha).root == checkout.root  # extracted once, reused

    settings = PreviewSettings(enabled=True)
    infos = combine(prs.heads(NOW + 60), read_pull_requests(state))
    decision = decide_previews(infos, load_tree(base.root), {7: load_tree(checkout.root)}, settings, NOW + 60)
    (preview,) = decision.previews
    assert (preview.name, preview.head_sha, preview.model_name) == ("chat-pr-7", sha, "llama@pr-7")
    # Polling saw the head at NOW: the TTL counts from there, not from the later pass.
    assert preview.expires_at == NOW + settings.ttl_seconds


def test_push_to_pr_restarts_first_seen(remote: tuple[Path, Path], tmp_path: Path) -> None:
    bare, work = remote
    prs = PullRequestSource.beside(GitSource(str(bare), "main", tmp_path / "state"))
    sha1 = open_pr(work, 7, {"chat/.dstack.yml": CHAT_V2})
    assert prs.heads(NOW) == [PullRequestHead(7, sha1, NOW)]
    assert prs.heads(NOW + 100) == [PullRequestHead(7, sha1, NOW)]  # same head: first seen kept
    sha2 = open_pr(work, 7, {"chat/.dstack.yml": CHAT_V2 + "auth: false\n"})
    assert prs.heads(NOW + 200) == [PullRequestHead(7, sha2, NOW + 200)]
    # A fresh object reads the ledger from disk: a restart does not reset the TTL.
    again = PullRequestSource.beside(GitSource(str(bare), "main", tmp_path / "state"))
    assert again.heads(NOW + 300, fetch=False) == [PullRequestHead(7, sha2, NOW + 200)]


def test_vanished_ref_tears_preview_down(remote: tuple[Path, Path], tmp_path: Path) -> None:
    bare, work = remote
    state = tmp_path / "state"
    branch = GitSource(str(bare), "main", state)
    base = load_tree(branch.current().root)
    prs = PullRequestSource.beside(branch)
    sha7 = open_pr(work, 7, {"chat/.dstack.yml": CHAT_V2})
    sha8 = open_pr(work, 8, {"embed/.dstack.yml": EMBED.replace("embed.py", "embed2.py")})
    heads = prs.heads(NOW)
    assert [(h.number, h.sha) for h in heads] == [(7, sha7), (8, sha8)]
    loads = {h.number: load_tree(prs.checkout(h.sha).root) for h in heads}
    settings = PreviewSettings(enabled=True)
    decision = decide_previews(combine(heads, {}), base, loads, settings, NOW)
    assert sorted(p.name for p in decision.previews) == ["chat-pr-7", "embed-pr-8"]

    git(work, "push", "-q", "origin", ":refs/pull/7/head")  # the ref is gone (no webhook needed)
    heads = prs.heads(NOW + 10)
    assert [h.number for h in heads] == [8]
    decision = decide_previews(combine(heads, {}), base, loads, settings, NOW + 10)
    assert [p.name for p in decision.previews] == ["embed-pr-8"]
    ledger = json.loads((state / PREVIEWS_DIR / "heads.json").read_text())
    assert list(ledger["heads"]) == ["8"]
    assert prs.prune([sha8]) == [sha7]
    assert not (state / PREVIEWS_DIR / "revisions" / sha7).exists()


def test_closed_and_fork_from_saved_webhook_records(remote: tuple[Path, Path], tmp_path: Path) -> None:
    bare, work = remote
    state = tmp_path / "state"
    branch = GitSource(str(bare), "main", state)
    base = load_tree(branch.current().root)
    prs = PullRequestSource.beside(branch)
    sha7 = open_pr(work, 7, {"chat/.dstack.yml": CHAT_V2})
    sha8 = open_pr(work, 8, {"chat/.dstack.yml": CHAT_V2})
    heads = prs.heads(NOW)
    loads = {h.number: load_tree(prs.checkout(h.sha).root) for h in heads}

    # GitHub keeps refs/pull/N/head after closing: the closed state comes from the saved event.
    record_pull_request(state, PullRequestInfo(7, sha7, state=PullRequestState.CLOSED, fork=False, labels=()))
    record_pull_request(state, PullRequestInfo(8, sha8, fork=True, labels=("preview",), base_ref="main"))
    known = read_pull_requests(state)
    assert known[8].labels == ("preview",) and known[8].fork is True
    decision = decide_previews(combine(heads, known), base, loads, PreviewSettings(enabled=True), NOW, "main")
    assert decision.previews == []
    assert [(r.pr, r.reason) for r in decision.rejected] == [(7, RejectReason.CLOSED), (8, RejectReason.FORK)]

    forget_pull_requests(state, keep=[8])
    assert list(read_pull_requests(state)) == [8]


def test_saved_record_round_trips_a_webhook_event(tmp_path: Path) -> None:
    payload = {
        "action": "labeled",
        "number": 5,
        "pull_request": {
            "number": 5,
            "state": "open",
            "merged": False,
            "title": "t",
            "html_url": "https://github.com/o/r/pull/5",
            "updated_at": "2026-11-28T04:00:00Z",
            "labels": [{"name": "preview"}],
            "head": {"sha": "b" * 40, "ref": "x", "repo": {"full_name": "o/r", "fork": False}},
            "base": {"ref": "main", "repo": {"full_name": "o/r", "fork": False}},
        },
    }
    info = parse_pull_request_event(payload)
    record_pull_request(tmp_path, info)
    assert read_pull_requests(tmp_path) == {5: info}


def test_fetch_error_is_credential_free(tmp_path: Path) -> None:
    url = f"file://user:s3cret@{tmp_path}/missing.git"
    prs = PullRequestSource(url, tmp_path / "repo.git", tmp_path / "state")
    with pytest.raises(PullSourceError) as err:
        prs.fetch()
    assert "s3cret" not in str(err.value)
    assert "missing.git" in str(err.value)
