"""Pull-request previews: which services of which PRs run as `<service>-pr-<N>`, and why not the rest.

Why this module exists: a preview is desired state like any other, so it must be decided the same
way — level-triggered, from what is true now, with no memory of events. This module is that decision
and nothing else: values in (the open PR heads, what GitHub said about them, the base branch's
loaded configs and each PR's loaded configs, the guard-rail settings, `now`), values out (the preview
services to run, each with its config already clamped, and for every PR that gets nothing, the
reason). No git, no HTTP, no clock; `reconciler.previews.pr_source` and `reconciler.previews.github` do the I/O.

Truth, in order:
- the PR refs on the remote (`refs/pull/<N>/head`) say which PRs exist and what their head commit
  is. A ref that disappeared means the PR is gone, so its previews are torn down even when the
  webhook was missed;
- webhook payloads or the REST API add state (open/closed/merged), labels, base branch and whether
  the head lives in a fork. Without them a PR is *unverified*: its ref counts as an open PR against
  the watched branch (that is what lets previews work from polling alone), but it never gets the
  deployment's secrets, and it is refused when a required label is configured (labels unknown).

Guard-rails (`PreviewSettings`, all on by default): at most `max_replicas_per_preview` replicas,
`spot_policy` forced (auto), a cap on concurrent previews (the oldest-pushed PRs keep theirs, the
others wait with a reason), a time-to-live after the last push, an optional required label, no
fork PRs unless allowed — and fork or unverified code never receives bare-`KEY` env values (those
come from the reconciler's secrets) unless `fork_secrets` says so explicitly.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from reconciler.config import ReplicaRange, ServiceConfig, SpotPolicy
from reconciler.config.loader import LoadedService, LoadResult

MAX_DNS_LABEL = 63
PREVIEW_PR_ENV = "TIDEGATE_PREVIEW_PR"
PREVIEW_SHA_ENV = "TIDEGATE_PREVIEW_SHA"
DEFAULT_TTL = 24 * 3600.0
_UNSAFE = re.compile(r"[^a-z0-9-]+")


class PullRequestState(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


class RejectReason(StrEnum):
    """Why a PR (or one of its services) has no running preview. Shown by `ps` and commit statuses."""

    CLOSED = "closed"
    MERGED = "merged"
    OTHER_BASE = "other-base"
    FORK = "fork"
    UNVERIFIED_ORIGIN = "unverified-origin"
    MISSING_LABEL = "missing-label"
    EXPIRED = "expired"
    NO_CHANGES = "no-changes"
    INVALID_CONFIG = "invalid-config"
    NAME_CLASH = "name-clash"
    TOO_LARGE = "too-large"
    PENDING_CAPACITY = "pending-capacity"  # over the concurrency cap: waits for a slot


@dataclass(frozen=True)
class PreviewSettings:
    """Guard-rails for previews. `spot_policy=None` keeps each service's own policy."""

    enabled: bool = False
    max_replicas_per_preview: int = 1
    spot_policy: SpotPolicy | None = SpotPolicy.AUTO
    max_concurrent: int = 5  # preview services running at once, over all PRs
    ttl_seconds: float = DEFAULT_TTL  # after the last push to the PR
    required_label: str | None = None  # None: any PR qualifies
    allow_forks: bool = False
    allow_unverified: bool = True  # PRs known only from their ref (no webhook/API information)
    fork_secrets: bool = False  # give fork/unverified previews the bare-KEY env values (secrets)


@dataclass(frozen=True)
class PullRequestHead:
    """A PR ref on the remote: `refs/pull/<number>/head` at `sha`, first seen at that sha at
    `first_seen_at` (the reconciler's clock: the best "last push" time polling can know)."""

    number: int
    sha: str
    first_seen_at: float


@dataclass(frozen=True)
class PullRequestInfo:
    """One PR as far as we know it. Fields left None are unknown (no webhook or API information)."""

    number: int
    head_sha: str
    state: PullRequestState = PullRequestState.OPEN
    merged: bool = False
    base_ref: str | None = None
    labels: tuple[str, ...] | None = None
    fork: bool | None = None
    title: str = ""
    url: str | None = None
    updated_at: float | None = None  # GitHub's updated_at (comments bump it too: not used for TTL)
    pushed_at: float | None = None  # last push as observed by us: drives the TTL

    @property
    def verified(self) -> bool:
        """True when GitHub told us where the head comes from (webhook or API)."""
        return self.fork is not None


@dataclass(frozen=True)
class PreviewService:
    """One preview to run: `loaded` is the PR's service with name, config and spec hash adjusted."""

    name: str
    pr: int
    head_sha: str
    source_service: str
    loaded: LoadedService
    expires_at: float | None
    withheld_env: tuple[str, ...] = ()  # bare-KEY secrets not given to this preview
    model_name: str | None = None  # "<model>@pr-<N>" when the service maps a model


@dataclass(frozen=True)
class PreviewRejection:
    pr: int
    reason: RejectReason
    detail: str
    service: str | None = None  # None: the whole PR


@dataclass(frozen=True)
class PreviewDecision:
    previews: list[PreviewService] = field(default_factory=list)
    rejected: list[PreviewRejection] = field(default_factory=list)

    def names(self) -> set[str]:
        return {p.name for p in self.previews}

    def for_pr(self, number: int) -> list[PreviewService]:
        return [p for p in self.previews if p.pr == number]


# -- names ---------------------------------------------------------------------------------------


def preview_name(service: str, pr: int) -> str:
    """`<service>-pr-<N>` as one DNS label (<= 63 chars of [a-z0-9-], no leading/trailing '-').
    A service part that must be cut keeps 4 hex digits of its full name's hash, so two long names
    sharing a prefix still get different previews."""
    suffix = f"-pr-{pr}"
    safe = _UNSAFE.sub("-", service.lower()).strip("-") or "svc"
    room = MAX_DNS_LABEL - len(suffix)
    if len(safe) > room:
        tag = hashlib.sha256(service.encode()).hexdigest()[:4]
        safe = f"{safe[: room - len(tag) - 1].rstrip('-')}-{tag}"
    return safe + suffix


def preview_model_name(model: str, pr: int) -> str:
    """The name a preview's mapped model has in `/v1/models`."""
    return f"{model}@pr-{pr}"


# -- what we know about each PR --------------------------------------------------------------------


def combine(
    heads: Sequence[PullRequestHead],
    known: Mapping[int, PullRequestInfo],
    open_pulls: Mapping[int, PullRequestInfo] | None = None,
) -> list[PullRequestInfo]:
    """The PRs that exist (one per ref), enriched with what webhooks/the API said about them.

    The ref decides existence and the head commit; `known` (saved webhook/API records, possibly
    stale) adds state, labels, base branch and fork. `open_pulls`, when given, is the API's complete
    list of open PRs and wins over `known`: a ref not in it is a closed PR (GitHub keeps the refs of
    closed PRs). A PR known from nowhere is open and unverified. Sorted by PR number."""
    out: list[PullRequestInfo] = []
    for head in sorted(heads, key=lambda h: h.number):
        info = open_pulls.get(head.number) if open_pulls is not None else None
        info = info or known.get(head.number)
        if info is None:
            info = PullRequestInfo(number=head.number, head_sha=head.sha)
        if open_pulls is not None and head.number not in open_pulls:
            info = replace(info, state=PullRequestState.CLOSED)
        out.append(replace(info, head_sha=head.sha, pushed_at=head.first_seen_at))
    return out


# -- the decision --------------------------------------------------------------------------------


def _gate(pr: PullRequestInfo, settings: PreviewSettings, watched_branch: str | None, now: float) -> PreviewRejection | None:
    """Whole-PR reasons for no preview, most fundamental first."""
    n = pr.number
    if pr.merged:
        return PreviewRejection(n, RejectReason.MERGED, "merged")
    if pr.state != PullRequestState.OPEN:
        return PreviewRejection(n, RejectReason.CLOSED, "closed")
    if watched_branch and pr.base_ref and pr.base_ref != watched_branch:
        return PreviewRejection(n, RejectReason.OTHER_BASE, f"targets {pr.base_ref!r}, not {watched_branch!r}")
    if pr.fork and not settings.allow_forks:
        return PreviewRejection(n, RejectReason.FORK, "from a fork; forks are not allowed (allow_forks)")
    if pr.fork is None and not settings.allow_unverified:
        return PreviewRejection(
            n, RejectReason.UNVERIFIED_ORIGIN, "origin unknown (no webhook or API data) and allow_unverified is off"
        )
    if settings.required_label is not None:
        if pr.labels is None:
            return PreviewRejection(
                n, RejectReason.MISSING_LABEL, f"labels unknown (no webhook or API data); needs {settings.required_label!r}"
            )
        if settings.required_label not in pr.labels:
            return PreviewRejection(n, RejectReason.MISSING_LABEL, f"needs label {settings.required_label!r}")
    expires = _expires_at(pr, settings)
    if expires is not None and now >= expires:
        return PreviewRejection(n, RejectReason.EXPIRED, f"no push for {settings.ttl_seconds:g}s (ttl)")
    return None


def _expires_at(pr: PullRequestInfo, settings: PreviewSettings) -> float | None:
    return None if pr.pushed_at is None else pr.pushed_at + settings.ttl_seconds


def changed_services(base: LoadResult, head: LoadResult) -> list[str]:
    """Services the PR adds or changes: loaded in the PR with a spec hash the base does not have."""
    out = []
    for name, svc in sorted(head.services.items()):
        old = base.services.get(name)
        if old is None or old.spec_hash != svc.spec_hash:
            out.append(name)
    return out


def clamp_config(config: ServiceConfig, pr: int, settings: PreviewSettings) -> ServiceConfig:
    """The preview's config: replicas capped, spot policy forced, the model renamed `<model>@pr-<N>`.
    A replica range that collapses to one value drops `scaling` (a fixed count cannot autoscale)."""
    cap = max(0, settings.max_replicas_per_preview)
    replicas = ReplicaRange(min=min(config.replicas.min, cap), max=min(config.replicas.max, cap))
    update: dict[str, object] = {"replicas": replicas}
    if not replicas.is_range:
        update["scaling"] = None
    if settings.spot_policy is not None:
        update["spot_policy"] = settings.spot_policy
    if config.model is not None:
        update["model"] = config.model.model_copy(update={"name": preview_model_name(config.model.name, pr)})
    return config.model_copy(update=update)


def _withhold_secrets(config: ServiceConfig) -> tuple[ServiceConfig, tuple[str, ...]]:
    """Drop bare-KEY env entries (their values would come from the deployment's secrets)."""
    bare = tuple(sorted(k for k, v in config.env.items() if v is None))
    if not bare:
        return config, ()
    env = {k: v for k, v in config.env.items() if v is not None}
    return config.model_copy(update={"env": env}), bare


def _build(pr: PullRequestInfo, svc: LoadedService, settings: PreviewSettings) -> PreviewService:
    name = preview_name(svc.name, pr.number)
    config = clamp_config(svc.config, pr.number, settings)
    withheld: tuple[str, ...] = ()
    trusted = pr.fork is False or settings.fork_secrets
    if not trusted:
        config, withheld = _withhold_secrets(config)
    # The config carries the preview's name like a loaded config carries its service's name (model_copy:
    # the name may be longer than a user-written `name:` may be, which is fine for a DNS label).
    # The PR and head commit go into the env: the app can tell it is a preview, and since the spec
    # hash covers literal env values, every push rolls the preview (also one changing only code).
    env = {**config.env, PREVIEW_PR_ENV: str(pr.number), PREVIEW_SHA_ENV: pr.head_sha}
    config = config.model_copy(update={"name": name, "env": env})
    loaded = replace(svc, name=name, config=config)  # (its spec hash: of this config)
    return PreviewService(
        name=name,
        pr=pr.number,
        head_sha=pr.head_sha,
        source_service=svc.name,
        loaded=loaded,
        expires_at=_expires_at(pr, settings),
        withheld_env=withheld,
        model_name=config.model.name if config.model is not None else None,
    )


def decide_previews(
    prs: Sequence[PullRequestInfo],
    base: LoadResult,
    heads: Mapping[int, LoadResult],
    settings: PreviewSettings,
    now: float,
    watched_branch: str | None = None,
) -> PreviewDecision:
    """The previews to run now, and the reason for every PR (or PR service) that gets none.

    `prs`: the PRs that exist (see `combine`); `heads`: each PR's tree loaded at its head commit
    (a PR missing here has not been loaded yet and gets nothing this pass); `base`: the watched
    branch loaded at its current commit. Over the concurrency cap, PRs pushed longest ago keep (or
    get) their previews first; the rest are PENDING_CAPACITY."""
    decision = PreviewDecision()
    if not settings.enabled:
        return decision
    candidates: list[tuple[PullRequestInfo, list[PreviewService]]] = []
    for pr in prs:
        rejection = _gate(pr, settings, watched_branch, now)
        if rejection is not None:
            decision.rejected.append(rejection)
            continue
        head = heads.get(pr.number)
        if head is None:
            continue
        planned: list[PreviewService] = []
        for failed in _failed_names(head):
            decision.rejected.append(
                PreviewRejection(pr.number, RejectReason.INVALID_CONFIG, "config does not validate", service=failed)
            )
        for name in changed_services(base, head):
            preview = _build(pr, head.services[name], settings)
            if preview.name in base.services or preview.name in head.services:
                decision.rejected.append(
                    PreviewRejection(
                        pr.number, RejectReason.NAME_CLASH, f"{preview.name!r} is a regular service", service=name
                    )
                )
                continue
            planned.append(preview)
        if not planned:
            if not any(r.pr == pr.number for r in decision.rejected):
                decision.rejected.append(PreviewRejection(pr.number, RejectReason.NO_CHANGES, "no service config changed"))
            continue
        candidates.append((pr, planned))

    used = 0
    cap = max(0, settings.max_concurrent)
    for pr, planned in sorted(candidates, key=lambda c: (c[0].pushed_at if c[0].pushed_at is not None else now, c[0].number)):
        if len(planned) > cap:
            decision.rejected.append(
                PreviewRejection(pr.number, RejectReason.TOO_LARGE, f"needs {len(planned)} previews; the cap is {cap}")
            )
        elif used + len(planned) > cap:
            decision.rejected.append(
                PreviewRejection(
                    pr.number, RejectReason.PENDING_CAPACITY, f"{used}/{cap} previews running; waits for a slot"
                )
            )
            # Strict order: a newer, smaller PR does not jump the queue (no flapping between PRs).
            used = cap
        else:
            decision.previews.extend(planned)
            used += len(planned)
    decision.previews.sort(key=lambda p: (p.pr, p.name))
    decision.rejected.sort(key=lambda r: (r.pr, r.service or ""))
    return decision


def _failed_names(head: LoadResult) -> list[str]:
    return sorted(head.failed)


def previews_by_pr(decision: PreviewDecision) -> dict[int, tuple[str, LoadResult]]:
    """The decided previews grouped per PR as `(head sha, LoadResult)`, ready for
    `desired.build_desired(load, revision=head_sha, workdir=<that PR's checkout>, ...)`."""
    out: dict[int, tuple[str, LoadResult]] = {}
    for p in decision.previews:
        sha, load = out.get(p.pr, (p.head_sha, LoadResult()))
        load.services[p.name] = p.loaded
        out[p.pr] = (sha, load)
    return out
