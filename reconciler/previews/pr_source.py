"""Pull-request heads from the git remote: fetch `refs/pull/*/head`, remember when each head was first
seen, extract a PR revision's files, and keep what webhooks/the API told us about each PR.

Why this module exists: previews must work from polling alone, so the PR refs GitHub publishes
(`refs/pull/<N>/head`, also for PRs from forks) are the source of truth for which PRs exist and
what their head commit is. They are fetched with `--prune` into `refs/tidegate/pull/<N>` of the
same bare clone `reconciler.source.checkout.GitSource` keeps for the branch, so a ref that disappears from
the remote loses its local ref on the next fetch and `reconciler.previews.decision` tears its previews down
without any webhook. Note that GitHub keeps `refs/pull/<N>/head` after a PR is closed: there,
closing is learnt from the webhook, from the API's list of open PRs, or at the latest by the TTL.

Files on disk, all under `<state>/previews/` (plain JSON, temp file + fsync + os.replace):
- `heads.json`  — `{N: {sha, first_seen_at}}`: when a head commit was first seen. This is the TTL's
  "last push" (GitHub's `updated_at` moves on comments too, our own plan comment included).
- `pulls.json`  — `{N: PullRequestInfo}` saved from webhook payloads / API answers.
- `decision.json` — the last preview decision (previews with PR, head, expiry; reasons for the rest)
  for `tidegate ps` in another process.
- `revisions/<sha>/` — each PR head's files, apart from `<state>/revisions/` so the branch source's
  pruning (newest few kept) never deletes a tree a preview still runs from.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from reconciler.config.loader import LoadResult, load_tree
from reconciler.previews.decision import (
    PreviewDecision,
    PullRequestHead,
    PullRequestInfo,
    PullRequestState,
    combine,
)
from reconciler.previews.github import GitHubClient, GitHubError
from reconciler.source.checkout import (
    Checkout,
    GitSource,
    extract_revision,
    git_error,
    open_bare_repo,
    redact_url,
)
from tidegate.fsio import write_json_atomic

PREVIEWS_DIR = "previews"
HEADS_FILE = "heads.json"
PULLS_FILE = "pulls.json"
DECISION_FILE = "decision.json"
REVISIONS_DIR = "revisions"
LOCAL_PREFIX = "refs/tidegate/pull/"
SCHEMA_VERSION = 1


class PullSourceError(Exception):
    """The PR refs could not be fetched or a PR revision could not be read (message is credential-free)."""


class PullRequestSource:
    """The PR side of one remote. `repo_dir` is a (bare) git repository, usually `GitSource.repo_dir`."""

    def __init__(self, url: str, repo_dir: Path, state_dir: Path, config_path: str | None = None) -> None:
        self.url = url
        self.repo_dir = repo_dir
        self.state_dir = state_dir
        self.config_path = config_path
        self.folder = state_dir / PREVIEWS_DIR

    @classmethod
    def beside(cls, source: GitSource) -> PullRequestSource:
        """The PR refs of the remote a branch source follows, fetched into the same bare clone."""
        return cls(source.url, source.repo_dir, source.state_dir, source.config_path)

    def _repo(self) -> Any:
        return open_bare_repo(self.repo_dir)

    def fetch(self) -> dict[int, str]:
        """Fetch every `refs/pull/<N>/head` (pruning the ones gone); return {N: head sha}."""
        import git

        repo = self._repo()
        try:
            repo.git.fetch("--quiet", "--no-tags", "--force", "--prune", self.url, f"+refs/pull/*/head:{LOCAL_PREFIX}*")
        except git.GitCommandError as e:
            raise PullSourceError(f"cannot fetch pull requests from {redact_url(self.url)}: {git_error(e, self.url)}") from e
        return self.local_heads()

    def local_heads(self) -> dict[int, str]:
        """{N: sha} of the PR refs fetched last time (no network)."""
        repo = self._repo()
        out: dict[int, str] = {}
        text = str(repo.git.for_each_ref("--format=%(refname) %(objectname)", LOCAL_PREFIX))
        for line in text.splitlines():
            ref, _, sha = line.partition(" ")
            number = ref.removeprefix(LOCAL_PREFIX)
            if number.isdigit():
                out[int(number)] = sha.strip()
        return out

    def heads(self, now: float, fetch: bool = True) -> list[PullRequestHead]:
        """The PR heads with their first-seen times (updates `heads.json`; forgets vanished PRs)."""
        current = self.fetch() if fetch else self.local_heads()
        return observe_heads(self.folder / HEADS_FILE, current, now)

    def checkout(self, sha: str) -> Checkout:
        """The files of a PR revision in `<state>/previews/revisions/<sha>/` (extracted once)."""
        import git

        root = self.folder / REVISIONS_DIR / sha
        if not root.is_dir():
            try:
                extract_revision(self._repo(), sha, root)
            except git.GitCommandError as e:
                raise PullSourceError(f"cannot read revision {sha[:12]}: {git_error(e, self.url)}") from e
        return Checkout(sha, root, self.config_path)

    def prune(self, keep: Iterable[str]) -> list[str]:
        """Delete extracted PR revisions not in `keep` (running replicas have their own copies)."""
        folder = self.folder / REVISIONS_DIR
        if not folder.is_dir():
            return []
        wanted = set(keep)
        removed = []
        for p in folder.iterdir():
            if p.is_dir() and p.name not in wanted:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
        return sorted(removed)


@dataclass(frozen=True)
class PullRequestSnapshot:
    """Everything `previews.decide_previews` needs about the PRs, gathered in one pass."""

    prs: list[PullRequestInfo]
    loads: dict[int, LoadResult]  # open PRs only, loaded at their head
    checkouts: dict[int, Checkout]  # where each loaded PR's files are: the previews' workdir
    errors: list[str] = field(default_factory=list)


def collect(
    source: PullRequestSource,
    now: float,
    *,
    github: GitHubClient | None = None,
    base_branch: str | None = None,
    fetch: bool = True,
) -> PullRequestSnapshot:
    """Fetch the PR refs, merge in what webhooks (saved records) and, with a client, the API's list
    of open PRs say, extract and load every open PR's head. Raises PullSourceError only when the
    refs cannot be fetched; an API failure falls back to saved records (reported in `errors`)."""
    errors: list[str] = []
    heads = source.heads(now, fetch=fetch)
    open_pulls: dict[int, PullRequestInfo] | None = None
    if github is not None:
        try:
            open_pulls = {p.number: p for p in github.list_open_pulls(base=None)}
        except GitHubError as e:
            errors.append(f"GitHub API: {e}")
        else:
            record_pull_requests(source.state_dir, open_pulls.values())
    numbers = [h.number for h in heads]
    forget_pull_requests(source.state_dir, keep=numbers)
    prs = combine(heads, read_pull_requests(source.state_dir), open_pulls)
    loads: dict[int, LoadResult] = {}
    checkouts: dict[int, Checkout] = {}
    for pr in prs:
        if pr.state != PullRequestState.OPEN or (base_branch and pr.base_ref and pr.base_ref != base_branch):
            continue
        try:
            checkout = source.checkout(pr.head_sha)
        except PullSourceError as e:
            errors.append(f"PR #{pr.number}: {e}")
            continue
        checkouts[pr.number] = checkout
        loads[pr.number] = load_tree(checkout.root, checkout.config_path)
    source.prune(c.revision for c in checkouts.values())
    return PullRequestSnapshot(prs, loads, checkouts, errors)


# -- decision.json -------------------------------------------------------------------------------


def write_decision(state_dir: Path, decision: PreviewDecision, now: float) -> None:
    """Publish the preview decision for `tidegate ps` (names, PRs, heads, expiry, reasons; no env values)."""
    body = {
        "schema_version": SCHEMA_VERSION,
        "at": now,
        "previews": [
            {
                "name": p.name,
                "pr": p.pr,
                "head_sha": p.head_sha,
                "service": p.source_service,
                "expires_at": p.expires_at,
                "model": p.model_name,
                "withheld_env": list(p.withheld_env),
            }
            for p in decision.previews
        ],
        "rejected": [
            {"pr": r.pr, "reason": str(r.reason), "detail": r.detail, "service": r.service} for r in decision.rejected
        ],
    }
    _write_json(state_dir / PREVIEWS_DIR / DECISION_FILE, body)


def read_decision(state_dir: Path) -> dict[str, Any]:
    """The last published decision as plain JSON (`previews`, `rejected`); empty lists when none."""
    data = _read_json(state_dir / PREVIEWS_DIR / DECISION_FILE)
    return {
        "at": data.get("at"),
        "previews": data.get("previews") if isinstance(data.get("previews"), list) else [],
        "rejected": data.get("rejected") if isinstance(data.get("rejected"), list) else [],
    }


# -- heads.json ----------------------------------------------------------------------------------


def observe_heads(path: Path, current: Mapping[int, str], now: float) -> list[PullRequestHead]:
    """Keep `first_seen_at` for heads already seen at the same sha; stamp `now` on new or moved heads."""
    known = _read_json(path).get("heads", {})
    heads: list[PullRequestHead] = []
    for number, sha in sorted(current.items()):
        entry = known.get(str(number)) if isinstance(known, dict) else None
        seen = now
        if isinstance(entry, dict) and entry.get("sha") == sha and isinstance(entry.get("first_seen_at"), int | float):
            seen = float(entry["first_seen_at"])
        heads.append(PullRequestHead(number=number, sha=sha, first_seen_at=seen))
    body = {str(h.number): {"sha": h.sha, "first_seen_at": h.first_seen_at} for h in heads}
    if body != known:
        _write_json(path, {"schema_version": SCHEMA_VERSION, "heads": body})
    return heads


# -- pulls.json ----------------------------------------------------------------------------------


def record_pull_request(state_dir: Path, info: PullRequestInfo) -> None:
    """Save what a webhook payload or the API said about a PR (the newest word wins)."""
    record_pull_requests(state_dir, [info])


def record_pull_requests(state_dir: Path, infos: Iterable[PullRequestInfo]) -> None:
    """Save several PR records at once; the file is rewritten only when something changed."""
    path = state_dir / PREVIEWS_DIR / PULLS_FILE
    data = _read_json(path)
    old = data.get("pulls") if isinstance(data.get("pulls"), dict) else {}
    assert isinstance(old, dict)
    pulls = dict(old)
    for info in infos:
        pulls[str(info.number)] = _info_to_json(info)
    if pulls != old or not path.exists():
        _write_json(path, {"schema_version": SCHEMA_VERSION, "pulls": pulls})


def read_pull_requests(state_dir: Path) -> dict[int, PullRequestInfo]:
    """Every saved PR record; unreadable entries are skipped."""
    pulls = _read_json(state_dir / PREVIEWS_DIR / PULLS_FILE).get("pulls")
    out: dict[int, PullRequestInfo] = {}
    if not isinstance(pulls, dict):
        return out
    for raw in pulls.values():
        try:
            info = _info_from_json(raw)
        except (KeyError, TypeError, ValueError):
            continue
        out[info.number] = info
    return out


def forget_pull_requests(state_dir: Path, keep: Iterable[int]) -> None:
    """Drop saved records of PRs whose ref is gone (keeps pulls.json from growing forever)."""
    path = state_dir / PREVIEWS_DIR / PULLS_FILE
    pulls = _read_json(path).get("pulls")
    if not isinstance(pulls, dict):
        return
    wanted = {str(n) for n in keep}
    kept = {k: v for k, v in pulls.items() if k in wanted}
    if kept != pulls:
        _write_json(path, {"schema_version": SCHEMA_VERSION, "pulls": kept})


def _info_to_json(info: PullRequestInfo) -> dict[str, Any]:
    body = asdict(info)
    body["state"] = str(info.state)
    body["labels"] = list(info.labels) if info.labels is not None else None
    return body


def _info_from_json(raw: Any) -> PullRequestInfo:
    if not isinstance(raw, dict):
        raise TypeError("not an object")
    labels = raw.get("labels")
    return PullRequestInfo(
        number=int(raw["number"]),
        head_sha=str(raw["head_sha"]),
        state=PullRequestState(raw.get("state", "open")),
        merged=bool(raw.get("merged", False)),
        base_ref=raw.get("base_ref"),
        labels=tuple(str(x) for x in labels) if isinstance(labels, list) else None,
        fork=raw.get("fork") if isinstance(raw.get("fork"), bool) else None,
        title=str(raw.get("title") or ""),
        url=raw.get("url"),
        updated_at=raw.get("updated_at"),
        pushed_at=raw.get("pushed_at"),
    )


# -- small file helpers ----------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, body: Mapping[str, Any]) -> None:
    write_json_atomic(path, body, indent=1, sort_keys=True)
