"""The GitHub side: webhook payloads as GitHub sends them, and the REST client against a local server."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from previews_support import REPO, SHA, TOKEN, FakeGitHub, event, pull_request

from reconciler.previews.decision import PullRequestState
from reconciler.previews.github import (
    PLAN_COMMENT_MARKER,
    CommitState,
    GitHubClient,
    GitHubPermanentError,
    GitHubSettings,
    GitHubTemporaryError,
    StatusReporter,
    deploy_status_update,
    parse_github_repo,
    parse_pull_request_event,
)

# -- webhook payloads ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "state", "merged", "fork", "labels"),
    [
        pytest.param(event("opened", pull_request()), PullRequestState.OPEN, False, False, (), id="opened"),
        pytest.param(
            event("synchronize", pull_request(), before="c3" * 20, after=SHA), PullRequestState.OPEN, False, False, (),
            id="synchronize",
        ),
        pytest.param(
            event("labeled", pull_request(labels=("preview", "bug")), label={"name": "preview"}),
            PullRequestState.OPEN, False, False, ("preview", "bug"), id="labeled",
        ),
        pytest.param(
            event("unlabeled", pull_request(), label={"name": "preview"}), PullRequestState.OPEN, False, False, (),
            id="unlabeled",
        ),
        pytest.param(
            event("closed", pull_request(state="closed")), PullRequestState.CLOSED, False, False, (), id="closed",
        ),
        pytest.param(
            event("closed", pull_request(state="closed", merged=True)), PullRequestState.CLOSED, True, False, (),
            id="merged",
        ),
        pytest.param(
            event("opened", pull_request(head_repo="dev/models", head_fork=True)), PullRequestState.OPEN, False, True, (),
            id="fork",
        ),
        pytest.param(
            event("opened", pull_request(head_repo=None)), PullRequestState.OPEN, False, True, (),
            id="deleted-head-repo-counts-as-fork",
        ),
        pytest.param(
            event("opened", pull_request(head_repo=REPO, head_fork=True)), PullRequestState.OPEN, False, False, (),
            id="branch-of-a-repo-that-is-itself-a-fork-is-not-a-fork-pr",
        ),
    ],
)
def test_parse_pull_request_event(
    payload: dict[str, Any], state: PullRequestState, merged: bool, fork: bool, labels: tuple[str, ...]
) -> None:
    # Round-trip through JSON text: the gateway saves the body it received.
    info = parse_pull_request_event(json.loads(json.dumps(payload)))
    assert (info.number, info.head_sha, info.base_ref) == (7, SHA, "main")
    assert (info.state, info.merged, info.fork, info.labels) == (state, merged, fork, labels)
    assert info.url == f"https://github.com/{REPO}/pull/7"
    assert info.updated_at == datetime(2026, 11, 28, 4, 0, tzinfo=UTC).timestamp()
    assert info.verified


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({"ref": "refs/heads/main", "after": SHA}, id="push-event"),
        pytest.param({"action": "opened", "pull_request": {"number": 1}}, id="no-head"),
        pytest.param({"zen": "Keep it logically awesome.", "hook_id": 1}, id="ping"),
    ],
)
def test_parse_rejects_other_payloads(payload: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        parse_pull_request_event(payload)


@pytest.mark.parametrize(
    ("remote", "slug"),
    [
        pytest.param("https://github.com/acme/models.git", "acme/models", id="https"),
        pytest.param("https://x-access-token:tok@github.com/acme/models", "acme/models", id="https-with-token"),
        pytest.param("git@github.com:acme/models.git", "acme/models", id="scp-ssh"),
        pytest.param("ssh://git@github.com/acme/models.git", "acme/models", id="ssh-url"),
        pytest.param("/srv/git/models", None, id="local-path"),
    ],
)
def test_parse_github_repo(remote: str, slug: str | None) -> None:
    assert parse_github_repo(remote) == slug


def test_settings_from_env_and_repr_hide_token() -> None:
    s = GitHubSettings.from_env({"GITHUB_TOKEN": TOKEN}, repo="git@github.com:acme/models.git")
    assert s is not None and (s.repo, s.token, s.api_url) == (REPO, TOKEN, "https://api.github.com")
    assert TOKEN not in repr(s)
    assert GitHubSettings.from_env({"GITHUB_TOKEN": TOKEN}, repo="/srv/git/models") is None


# -- the REST API, served locally (fixture `github` in conftest.py) --------------------------------


def test_pull_metadata(github: tuple[FakeGitHub, GitHubClient]) -> None:
    gh, client = github
    gh.pulls[7] = pull_request(7, labels=("preview",))
    gh.pulls[8] = pull_request(8, head_repo="dev/models", head_fork=True, sha="c3" * 20)
    gh.pulls[9] = pull_request(9, state="closed", merged=True)
    gh.pulls[10] = pull_request(10, base_ref="release")
    seven = client.get_pull(7)
    assert (seven.state, seven.labels, seven.fork, seven.head_sha) == (PullRequestState.OPEN, ("preview",), False, SHA)
    nine = client.get_pull(9)
    assert (nine.state, nine.merged) == (PullRequestState.CLOSED, True)
    assert [(p.number, p.fork) for p in client.list_open_pulls(base="main")] == [(7, False), (8, True)]
    assert all(auth == f"Bearer {TOKEN}" for _, _, auth in gh.requests)
    with pytest.raises(GitHubPermanentError, match="404"):
        client.get_pull(11)


def test_commit_status_pending_then_success(github: tuple[FakeGitHub, GitHubClient]) -> None:
    gh, client = github
    url = "http://chat-pr-7.localhost:8080"
    client.set_status(SHA, CommitState.PENDING, "deploying chat-pr-7", target_url=url)
    client.set_status(SHA, CommitState.SUCCESS, "chat-pr-7 is ready " + "x" * 200, target_url=url)
    client.set_status(SHA, CommitState.FAILURE, "no preview: from a fork", context="tidegate/preview")
    assert [(sha, body["state"], body["context"]) for sha, body in gh.statuses] == [
        (SHA, "pending", "tidegate"),
        (SHA, "success", "tidegate"),
        (SHA, "failure", "tidegate/preview"),
    ]
    assert gh.statuses[0][1]["target_url"] == url
    assert len(gh.statuses[1][1]["description"]) == 140
    assert "target_url" not in gh.statuses[2][1]


def test_plan_comment_created_then_updated_not_duplicated(github: tuple[FakeGitHub, GitHubClient]) -> None:
    gh, client = github
    # Other people's comments fill the first page: the marker search must follow pagination.
    gh.comments[7] = [{"id": 1, "body": "LGTM"}, {"id": 2, "body": "nit"}, {"id": 3, "body": "ship it"}]
    first = client.upsert_plan_comment(7, "### Plan\n1 to create")
    second = client.upsert_plan_comment(7, "### Plan\n1 to update")
    assert first == second
    ours = [c for c in gh.comments[7] if PLAN_COMMENT_MARKER in c["body"]]
    assert len(ours) == 1 and len(gh.comments[7]) == 4
    assert ours[0]["body"] == f"{PLAN_COMMENT_MARKER}\n### Plan\n1 to update"
    methods = [(m, p.rsplit("/", 2)[-2] if m == "PATCH" else "") for m, p, _ in gh.requests]
    assert ("PATCH", "comments") in methods


@pytest.mark.parametrize(
    ("status", "error"),
    [
        pytest.param(502, GitHubTemporaryError, id="5xx-temporary"),
        pytest.param(429, GitHubTemporaryError, id="rate-limited-temporary"),
        pytest.param(422, GitHubPermanentError, id="invalid-permanent"),
    ],
)
def test_errors_are_classified(github: tuple[FakeGitHub, GitHubClient], status: int, error: type[Exception]) -> None:
    gh, client = github
    gh.fail_next = status
    with pytest.raises(error, match=str(status)):
        client.set_status(SHA, CommitState.PENDING, "x")


def test_bad_token_is_permanent_and_never_logged(
    github: tuple[FakeGitHub, GitHubClient], caplog: pytest.LogCaptureFixture
) -> None:
    gh, client = github
    caplog.set_level(logging.DEBUG)
    gh.pulls[7] = pull_request(7)
    client.get_pull(7)
    bad = GitHubClient(GitHubSettings(repo=REPO, token="wrong-token", api_url=client.settings.api_url))
    try:
        with pytest.raises(GitHubPermanentError, match="401") as err:
            bad.get_pull(7)
    finally:
        bad.close()
    assert "wrong-token" not in str(err.value)
    assert TOKEN not in caplog.text and "wrong-token" not in caplog.text
    assert TOKEN not in repr(client) and TOKEN not in repr(client.settings)


def test_unreachable_api_is_temporary() -> None:
    client = GitHubClient(GitHubSettings(repo=REPO, token=TOKEN, api_url="http://127.0.0.1:9", timeout=2))
    try:
        with pytest.raises(GitHubTemporaryError) as err:
            client.get_pull(7)
    finally:
        client.close()
    assert TOKEN not in str(err.value)


@pytest.mark.parametrize(
    ("services", "errors", "state", "description"),
    [
        pytest.param({"chat": (1, 1), "embed": (2, 2)}, [], CommitState.SUCCESS, "deployed: 2 service(s) ready", id="ready"),
        pytest.param({"chat": (0, 1), "embed": (2, 2)}, [], CommitState.PENDING, "rolling out: 2/3 replicas ready",
                     id="rolling"),
        pytest.param({"chat": (1, 1)}, ["chat: no offer", "x: y"], CommitState.FAILURE, "chat: no offer (+1 more)",
                     id="errors"),
        pytest.param({}, [], CommitState.SUCCESS, "deployed: 0 service(s) ready", id="nothing-to-deploy"),
    ],
)
def test_deploy_status(services: dict[str, tuple[int, int]], errors: list[str], state: CommitState, description: str) -> None:
    update = deploy_status_update(SHA, services, errors, "http://127.0.0.1:8080")
    assert (update.sha, update.state, update.description, update.context) == (SHA, state, description, "tidegate")


def test_status_reporter_posts_only_changes(github: tuple[FakeGitHub, GitHubClient]) -> None:
    gh, client = github
    reporter = StatusReporter(client)
    pending = deploy_status_update(SHA, {"chat": (0, 1)}, [])
    assert reporter.post([pending]) == [] and reporter.post([pending]) == []
    assert reporter.post([deploy_status_update(SHA, {"chat": (1, 1)}, [])]) == []
    assert [body["state"] for _, body in gh.statuses] == ["pending", "success"]
    gh.fail_next = 500
    errors = reporter.post([deploy_status_update(SHA, {}, ["boom"])])
    assert len(errors) == 1 and "500" in errors[0]
