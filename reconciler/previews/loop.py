"""Previews inside the running reconciler: one object the loop refreshes each pass and the engine asks.

Why this module exists: a preview pass is a fixed little sequence — fetch the PR refs, merge what
GitHub said, load each open PR, decide, publish the decision for `ps`, turn the previews into
desired services, and afterwards tell GitHub how they are doing — and the loop, the engine and the
webhook path each need one piece of it. `PreviewProvider` holds the sequence so each call site is
a line:

    provider = PreviewProvider(PullRequestSource.beside(git_source), preview_settings, ...)
    provider.note_verified(event, payload)             # pass, for each HMAC-checked webhook
    provider.note_signal(signal)                       # pass, for every drained `wake` signal
    provider.refresh(base_checkout, now)               # loop, before engine.reconcile
    ds = provider.extend(ds)                           # engine, right after build_desired
    provider.report(read_snapshot(state_dir))          # loop, after engine.reconcile

Trust: what a PR is (open or closed, fork or not, its labels) is learnt only from a webhook whose
signature the in-process gateway checked (`note_verified`) or from the GitHub API with the
operator's token. A signal file is only a wake-up: anyone who can write `<state>/signals/` could
write one, so `note_signal` reads nothing from it but the number of a PR to ask the API about.

Failure policy: when the PR refs cannot be fetched, the previous decision stands (a network blip
must not tear every preview down); when the API fails, saved webhook/API records are used.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backends.base import BackendRegistry
from reconciler.config.loader import load_tree
from reconciler.engine.desired import DesiredSet
from reconciler.previews.decision import PreviewDecision, PreviewSettings, decide_previews
from reconciler.previews.github import (
    GitHubClient,
    GitHubError,
    StatusReporter,
    preview_status_updates,
    pull_request_from_webhook,
)
from reconciler.previews.pr_source import (
    PullRequestSnapshot,
    PullRequestSource,
    PullSourceError,
    collect,
    record_pull_request,
    write_decision,
)
from reconciler.previews.wiring import merge_desired, preview_desired
from reconciler.source.checkout import Checkout
from tidegate.routes import RoutesSnapshot

log = logging.getLogger("tidegate.previews")


@dataclass
class PreviewProvider:
    source: PullRequestSource
    settings: PreviewSettings
    branch: str
    env: Mapping[str, str] = field(repr=False, default_factory=dict)
    salt: str = ""
    # The engine's backends: which are configured, and which ship the checkout to a replica.
    backends: BackendRegistry = field(default_factory=BackendRegistry)
    domain: str = "localhost"
    default_backend: str = "local"
    github: GitHubClient | None = None
    url_base: str = "http://{name}.localhost:8080"  # target_url of statuses; `{name}` is the preview
    decision: PreviewDecision = field(default_factory=PreviewDecision)
    snapshot: PullRequestSnapshot | None = None
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._reporter = StatusReporter(self.github) if self.github is not None else None

    # -- webhooks ------------------------------------------------------------------------------

    def note_verified(self, event: str, payload: Mapping[str, Any]) -> None:
        """Save the PR of a webhook the gateway verified (HMAC) and handed over in-process."""
        info = pull_request_from_webhook(event, payload)
        if info is not None:
            record_pull_request(self.source.state_dir, info)

    def note_signal(self, signal: Mapping[str, Any]) -> None:
        """A `wake` signal names at most a PR number to look at: with a token, that PR is read from
        the API; whatever else the file claims (a `pull_request` object, fork, labels) is ignored."""
        number = signal.get("pr")
        if self.github is None or not isinstance(number, int) or isinstance(number, bool):
            return
        try:
            info = self.github.get_pull(number)
        except GitHubError as e:
            log.warning("cannot read PR #%s from GitHub: %s", number, e)
            return
        record_pull_request(self.source.state_dir, info)

    # -- each pass -----------------------------------------------------------------------------

    def refresh(self, base: Checkout, now: float) -> PreviewDecision:
        """Decide the previews for this pass (keeps the previous decision if the refs cannot be fetched)."""
        if not self.settings.enabled:
            self.decision = PreviewDecision()
            return self.decision
        try:
            snap = collect(self.source, now, github=self.github, base_branch=self.branch)
        except PullSourceError as e:
            self.errors = [str(e)]
            log.warning("%s; keeping the previous previews", e)
            return self.decision
        self.snapshot = snap
        self.errors = list(snap.errors)
        for err in snap.errors:
            log.warning("previews: %s", err)
        base_load = load_tree(Path(base.root), base.config_path)
        self.decision = decide_previews(snap.prs, base_load, snap.loads, self.settings, now, watched_branch=self.branch)
        write_decision(self.source.state_dir, self.decision, now)
        return self.decision

    def extend(self, production: DesiredSet) -> DesiredSet:
        """Production's desired set plus the decided previews (each from its own PR checkout)."""
        if not self.decision.previews or self.snapshot is None:
            return production
        workdirs = {n: c.root for n, c in self.snapshot.checkouts.items()}
        previews = preview_desired(
            self.decision, workdirs, env=self.env, salt=self.salt, backends=self.backends.names(),
            ships_workdir=self.backends.ships_workdir, domain=self.domain, default_backend=self.default_backend,
        )
        return merge_desired(production, previews)

    def preview_prs(self) -> dict[str, int]:
        """Preview service name -> PR number (for `ServiceRoute.preview_pr` and `ps`)."""
        return {p.name: p.pr for p in self.decision.previews}

    def fingerprint(self) -> tuple[tuple[str, str], ...]:
        """Changes whenever the set of previews or any head moves (for the engine's desired cache key)."""
        return tuple((p.name, p.loaded.spec_hash) for p in self.decision.previews)

    def report(self, routes: RoutesSnapshot) -> list[str]:
        """Post commit statuses for the open PRs (only when something changed); returns errors."""
        if self._reporter is None or self.snapshot is None:
            return []
        ready = {
            name for name, route in routes.services.items() if any(not u.draining for u in route.upstreams)
        }
        updates = preview_status_updates(
            self.snapshot.prs, self.decision, ready, lambda name: self.url_base.format(name=name)
        )
        return self._reporter.post(updates)
