"""GitHub as seen by tidegate: pull-request events and the REST API (PR metadata, statuses, comments).

Why this module exists: previews work from git refs alone (`reconciler.previews.pr_source`), but only GitHub
knows whether a PR is still open, which labels it carries and whether its head lives in a fork.
That knowledge arrives two ways, and both end up as the same `PullRequestInfo` value:

- webhook payloads (`pull_request` events) that the gateway saved: `parse_pull_request_event`;
- the REST API when a token is configured: `GitHubClient.get_pull` / `list_open_pulls`.

The same client closes the loop back to GitHub: a commit status on the deployed commit
(pending -> success/failure, linking to the preview or service URL) and ONE plan comment per PR,
found again through a hidden marker so each push edits it instead of piling comments up.

The token is a secret: it lives only in the `Authorization` header, never in a repr, a log line or
an exception message. The base URL is configurable (GitHub Enterprise, and a local server in tests).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import httpx

from reconciler.previews.decision import PreviewDecision, PullRequestInfo, PullRequestState, RejectReason
from reconciler.render.plan_markdown import PLAN_COMMENT_MARKER

DEFAULT_API_URL = "https://api.github.com"
STATUS_CONTEXT = "tidegate"
# GitHub rejects status descriptions longer than 140 characters.
MAX_STATUS_DESCRIPTION = 140
_MAX_PAGES = 50

_REMOTE_PATTERNS = (
    re.compile(r"^(?:https?|git|ssh)://(?:[^@/]+@)?[^/]+/(?P<owner>[^/]+)/(?P<name>[^/]+?)(?:\.git)?/?$"),
    re.compile(r"^[^@/:]+@[^:/]+:(?P<owner>[^/]+)/(?P<name>[^/]+?)(?:\.git)?/?$"),
)


class GitHubError(Exception):
    """A GitHub API call failed; the message never contains the token."""


class GitHubTemporaryError(GitHubError):
    """Rate limited, 5xx or a network error: retry later."""


class GitHubPermanentError(GitHubError):
    """Bad credentials, missing repository or PR, invalid request: retrying will not help."""


class CommitState(StrEnum):
    PENDING = "pending"
    SUCCESS = "success"
    FAILURE = "failure"
    ERROR = "error"


@dataclass(frozen=True)
class GitHubSettings:
    """Where the API is and who we are. Built once at the entry point (`from_env`)."""

    repo: str  # "owner/name"
    token: str | None = field(default=None, repr=False)
    api_url: str = DEFAULT_API_URL
    timeout: float = 10.0
    status_context: str = STATUS_CONTEXT

    @classmethod
    def from_env(cls, environ: Mapping[str, str], repo: str | None = None) -> GitHubSettings | None:
        """`TIDEGATE_GITHUB_TOKEN` (else `GITHUB_TOKEN`), `TIDEGATE_GITHUB_API` and the repository from
        `TIDEGATE_GITHUB_REPO` or the remote URL `repo`. None when no GitHub repository is known."""
        slug = environ.get("TIDEGATE_GITHUB_REPO") or (parse_github_repo(repo) if repo else None)
        if not slug:
            return None
        token = environ.get("TIDEGATE_GITHUB_TOKEN") or environ.get("GITHUB_TOKEN") or None
        return cls(repo=slug, token=token, api_url=environ.get("TIDEGATE_GITHUB_API") or DEFAULT_API_URL)


def parse_github_repo(remote: str) -> str | None:
    """`owner/name` from a remote URL (https, ssh://, scp-like `git@host:owner/name.git`), else None."""
    text = remote.strip()
    for pattern in _REMOTE_PATTERNS:
        m = pattern.match(text)
        if m:
            return f"{m['owner']}/{m['name']}"
    return None


def _timestamp(value: object) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _is_fork(pr: Mapping[str, Any]) -> bool:
    """A head outside the base repository. Comparing full names is what matters: `head.repo.fork` is
    also true for a branch of a repository that is itself a fork of something else. A deleted head
    repository (`head.repo: null`) can only have been a fork."""
    head_repo = (pr.get("head") or {}).get("repo")
    base_repo = (pr.get("base") or {}).get("repo") or {}
    if head_repo is None:
        return True
    head_name, base_name = head_repo.get("full_name"), base_repo.get("full_name")
    if isinstance(head_name, str) and isinstance(base_name, str):
        return head_name.lower() != base_name.lower()
    return bool(head_repo.get("fork"))


def parse_pull_request(pr: Mapping[str, Any]) -> PullRequestInfo:
    """A REST API pull-request object (also the `pull_request` field of a webhook) as PullRequestInfo."""
    try:
        number = int(pr["number"])
        head_sha = str(pr["head"]["sha"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError("not a GitHub pull request object (needs number and head.sha)") from e
    merged = bool(pr.get("merged") or pr.get("merged_at"))
    state = PullRequestState.OPEN if pr.get("state") == "open" else PullRequestState.CLOSED
    labels = tuple(str(lbl["name"]) for lbl in pr.get("labels") or () if isinstance(lbl, Mapping) and "name" in lbl)
    base = pr.get("base") or {}
    return PullRequestInfo(
        number=number,
        head_sha=head_sha,
        state=state,
        merged=merged,
        base_ref=str(base["ref"]) if base.get("ref") else None,
        labels=labels,
        fork=_is_fork(pr),
        title=str(pr.get("title") or ""),
        url=str(pr["html_url"]) if pr.get("html_url") else None,
        updated_at=_timestamp(pr.get("updated_at")),
    )


def parse_pull_request_event(payload: Mapping[str, Any]) -> PullRequestInfo:
    """The PR described by a GitHub `pull_request` webhook payload (any action: opened, synchronize,
    reopened, closed, labeled, unlabeled, ...). The payload's `pull_request` object is the PR's state
    *after* the action, so the action itself needs no special casing. Raises ValueError otherwise."""
    pr = payload.get("pull_request")
    if not isinstance(pr, Mapping):
        raise ValueError("not a pull_request event payload (no pull_request object)")
    return parse_pull_request(pr)


class GitHubClient:
    """Thin httpx client for the few REST calls tidegate makes. Use as a context manager or `close()`.

    `transport` is for tests (httpx.MockTransport); real tests point `api_url` at a local server.
    """

    def __init__(self, settings: GitHubSettings, transport: httpx.BaseTransport | None = None) -> None:
        self.settings = settings
        headers = {
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
            "User-Agent": "tidegate",
        }
        if settings.token:
            headers["Authorization"] = f"Bearer {settings.token}"
        self._http = httpx.Client(
            base_url=settings.api_url.rstrip("/"),
            headers=headers,
            timeout=settings.timeout,
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"GitHubClient(repo={self.settings.repo!r}, api_url={self.settings.api_url!r})"

    def __enter__(self) -> GitHubClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- pull requests -------------------------------------------------------------------------

    def get_pull(self, number: int) -> PullRequestInfo:
        """One PR's current metadata (state, merged, labels, fork or not, head sha, base branch)."""
        data = self._request("GET", f"/repos/{self.settings.repo}/pulls/{number}").json()
        return parse_pull_request(data)

    def list_open_pulls(self, base: str | None = None) -> list[PullRequestInfo]:
        """Every open PR (optionally only those targeting `base`), following pagination."""
        params: dict[str, str | int] = {"state": "open", "per_page": 100}
        if base:
            params["base"] = base
        return [parse_pull_request(item) for item in self._paginate(f"/repos/{self.settings.repo}/pulls", params)]

    # -- commit statuses -----------------------------------------------------------------------

    def set_status(
        self,
        sha: str,
        state: CommitState,
        description: str,
        target_url: str | None = None,
        context: str | None = None,
    ) -> None:
        """Create a commit status (GitHub keeps the latest per context, so pending -> success works)."""
        body: dict[str, str] = {
            "state": str(state),
            "description": description[:MAX_STATUS_DESCRIPTION],
            "context": context or self.settings.status_context,
        }
        if target_url:
            body["target_url"] = target_url
        self._request("POST", f"/repos/{self.settings.repo}/statuses/{sha}", json=body)

    # -- the plan comment ----------------------------------------------------------------------

    def find_plan_comment(self, number: int) -> int | None:
        """The id of the PR comment carrying PLAN_COMMENT_MARKER, or None."""
        path = f"/repos/{self.settings.repo}/issues/{number}/comments"
        for item in self._paginate(path, {"per_page": 100}):
            if PLAN_COMMENT_MARKER in str(item.get("body") or ""):
                return int(item["id"])
        return None

    def upsert_plan_comment(self, number: int, body: str) -> int:
        """Create the PR's plan comment, or edit the one already there. Returns the comment id.
        The marker is added when `body` lacks it, so the next call finds this comment again."""
        text = body if PLAN_COMMENT_MARKER in body else f"{PLAN_COMMENT_MARKER}\n{body}"
        existing = self.find_plan_comment(number)
        if existing is not None:
            self._request("PATCH", f"/repos/{self.settings.repo}/issues/comments/{existing}", json={"body": text})
            return existing
        created = self._request("POST", f"/repos/{self.settings.repo}/issues/{number}/comments", json={"body": text})
        return int(created.json()["id"])

    # -- plumbing ------------------------------------------------------------------------------

    def _paginate(self, path: str, params: Mapping[str, str | int]) -> Iterator[Mapping[str, Any]]:
        url: str | None = path
        query: Mapping[str, str | int] | None = params
        for _ in range(_MAX_PAGES):
            if url is None:
                return
            response = self._request("GET", url, params=query)
            items = response.json()
            if not isinstance(items, list):
                raise GitHubPermanentError(f"GET {path}: expected a list")
            yield from (i for i in items if isinstance(i, Mapping))
            nxt = response.links.get("next", {}).get("url")
            url, query = (nxt, None) if nxt else (None, None)

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            # httpx errors name the URL only; the token is in a header and never part of the text.
            raise GitHubTemporaryError(f"{method} {path}: {type(e).__name__}") from e
        if response.is_success:
            return response
        what = f"{method} {response.request.url.path}: HTTP {response.status_code}"
        message = _error_message(response)
        if message:
            what += f" ({message})"
        rate_limited = response.status_code in (403, 429) and (
            response.headers.get("x-ratelimit-remaining") == "0" or "retry-after" in response.headers
        )
        if response.status_code >= 500 or response.status_code == 429 or rate_limited:
            raise GitHubTemporaryError(what)
        raise GitHubPermanentError(what)


def _error_message(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return ""
    if isinstance(data, Mapping):
        return str(data.get("message") or "")[:200]
    return ""


def pull_request_from_webhook(event: str, payload: Mapping[str, Any]) -> PullRequestInfo | None:
    """The PR of a `pull_request` webhook whose signature the gateway has checked (it hands the
    payload over in-process, never through a file: SECURITY.md); None for other events."""
    if event != "pull_request":
        return None
    pr = payload.get("pull_request")
    if not isinstance(pr, Mapping):
        return None
    try:
        return parse_pull_request(pr)
    except ValueError:
        return None


# -- commit statuses for previews ------------------------------------------------------------------

PREVIEW_CONTEXT = "tidegate/preview"


@dataclass(frozen=True)
class StatusUpdate:
    sha: str
    state: CommitState
    description: str
    target_url: str | None = None
    context: str = PREVIEW_CONTEXT


# Rejections that are a problem with the PR (red), as opposed to policy or nothing-to-do (green).
_FAILING = {
    RejectReason.FORK,
    RejectReason.INVALID_CONFIG,
    RejectReason.NAME_CLASH,
    RejectReason.TOO_LARGE,
    RejectReason.UNVERIFIED_ORIGIN,
}


def preview_status_updates(
    prs: Sequence[PullRequestInfo],
    decision: PreviewDecision,
    ready: Collection[str],
    url_for: Callable[[str], str],
) -> list[StatusUpdate]:
    """Pure: the status each open PR's head commit should carry. Previews all ready -> success
    linking the first preview; some starting -> pending; no preview -> the reason (fork, invalid
    config ... as failure; waiting for a slot as pending; no change, missing label, expired as
    success, since nothing is wrong with the PR)."""
    out: list[StatusUpdate] = []
    for pr in prs:
        if pr.state != PullRequestState.OPEN:
            continue
        previews = decision.for_pr(pr.number)
        rejections = [r for r in decision.rejected if r.pr == pr.number]
        if previews:
            names = [p.name for p in previews]
            waiting = [n for n in names if n not in ready]
            url = url_for(names[0])
            problems = [f"{r.service or 'PR'}: {r.detail}" for r in rejections if r.reason in _FAILING]
            if problems:
                out.append(StatusUpdate(pr.head_sha, CommitState.FAILURE, "; ".join(problems), url))
            elif waiting:
                out.append(StatusUpdate(pr.head_sha, CommitState.PENDING, f"starting {', '.join(waiting)}", url))
            else:
                out.append(StatusUpdate(pr.head_sha, CommitState.SUCCESS, f"ready: {', '.join(names)}", url))
        elif rejections:
            first = rejections[0]
            if first.reason == RejectReason.PENDING_CAPACITY:
                state = CommitState.PENDING
            elif any(r.reason in _FAILING for r in rejections):
                state = CommitState.FAILURE
            else:
                state = CommitState.SUCCESS
            where = f"{first.service}: " if first.service else ""
            out.append(StatusUpdate(pr.head_sha, state, f"no preview: {where}{first.detail}"))
    return out


def deploy_status_update(
    sha: str,
    services: Mapping[str, tuple[int, int]],
    errors: Sequence[str],
    target_url: str | None = None,
    context: str = STATUS_CONTEXT,
) -> StatusUpdate:
    """Pure: the status of the deployed commit after a pass. `services`: production service name ->
    (ready replicas, desired replicas). Errors -> failure; everything ready -> success; else pending."""
    if errors:
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        return StatusUpdate(sha, CommitState.FAILURE, f"{errors[0]}{more}", target_url, context)
    ready = sum(min(r, d) for r, d in services.values())
    wanted = sum(d for _, d in services.values())
    if ready >= wanted:
        return StatusUpdate(sha, CommitState.SUCCESS, f"deployed: {len(services)} service(s) ready", target_url, context)
    return StatusUpdate(sha, CommitState.PENDING, f"rolling out: {ready}/{wanted} replicas ready", target_url, context)


class StatusReporter:
    """Posts statuses through a client, skipping one identical to the last posted for the same
    commit and context (a level-triggered loop computes the same status every pass; GitHub keeps
    at most 1000 per commit and context). Errors are returned, not raised: a status is best effort."""

    def __init__(self, client: GitHubClient) -> None:
        self.client = client
        self._last: dict[tuple[str, str], tuple[str, str, str | None]] = {}

    def post(self, updates: Sequence[StatusUpdate]) -> list[str]:
        errors: list[str] = []
        for u in updates:
            key = (u.sha, u.context)
            value = (str(u.state), u.description[:MAX_STATUS_DESCRIPTION], u.target_url)
            if self._last.get(key) == value:
                continue
            try:
                self.client.set_status(u.sha, u.state, u.description, target_url=u.target_url, context=u.context)
            except GitHubError as e:
                errors.append(str(e))
                continue
            self._last[key] = value
        return errors
