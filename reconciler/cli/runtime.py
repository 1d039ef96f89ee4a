"""Assembling a running reconciler from Settings: backends, engine, source, the pass (the gateway
and control API it serves: `serving`).

Why a module of its own: `plan`, `apply`, `up`, `stop` and `start` all need the same wiring
(installation id -> owner -> backends -> engine), and `up` adds the long-lived parts (the loop
pass that fetches, applies queued stop/start signals and reconciles; the gateway server thread).
Keeping that here leaves the command modules (`up_cmd.py`, `commands.py`) as argument parsing and
printing.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backends.base import BackendRegistry
from backends.cloud.orphans import OrphanSweeper, read_known_replica_ids
from reconciler.cli.settings import Settings
from reconciler.engine.reconcile import Engine, EngineSettings, PassReport, Snapshot
from reconciler.source.checkout import Checkout, GitSource, Source, SourceError, make_source
from reconciler.state.store import StateStore
from reconciler.state.view import status_views
from tidegate.fsio import describe_os_error
from tidegate.routes_io import read_snapshot

if TYPE_CHECKING:
    from reconciler.previews.github import StatusReporter
    from reconciler.previews.loop import PreviewProvider

log = logging.getLogger("tidegate.runtime")


class RuntimeError_(Exception):
    """A command cannot run as asked (no --repo, unknown service); the message is for the user."""


def owner_of(state_dir: Path, create: bool = True) -> str:
    return StateStore(state_dir).installation(create=create).id


def build_registry(settings: Settings, owner: str, tunnels: bool = False) -> BackendRegistry:
    """The local backend always; cloud backends when `--settings FILE` names them. `tunnels`: this
    process owns the state dir and keeps the SSH tunnels to cloud replicas (`up`, `apply`)."""
    from backends.local.backend import LocalBackend, SandboxMode

    registry = BackendRegistry()
    registry.register(
        LocalBackend(
            root=settings.state_dir / "replicas",
            owner=owner,
            sandbox=SandboxMode(settings.sandbox),
            egress_allow=settings.egress_allow,
        )
    )
    if settings.settings_file is not None:
        from backends.registry import build_backends
        from reconciler.cli.settings import load_cloud_settings

        cloud = load_cloud_settings(settings.settings_file, settings.env)
        for backend in build_backends(cloud, owner, settings.state_dir, tunnels=tunnels, keys_dir=settings.tunnel_keys):
            registry.register(backend)
    return registry


def build_engine(
    settings: Settings, read_only: bool = False, *, missing_env_ok: bool = False, **stores: Any
) -> Engine:
    """The engine over this state dir. Not read-only: takes the state-dir lock (StateLockedError
    naming the holder when another process has it). `missing_env_ok`: a pull request's plan."""
    owner = owner_of(settings.state_dir, create=not read_only)
    engine_settings = EngineSettings(
        domain=settings.domain,
        allow_empty=settings.allow_empty,
        env=settings.env,
        ready_timeout=settings.ready_timeout,
        default_backends=settings.default_backends,
        workers=settings.workers,
        missing_env_ok=missing_env_ok,
    )
    registry = build_registry(settings, owner, tunnels=not read_only)
    return Engine(settings.state_dir, registry, engine_settings, read_only=read_only, **stores)


def to_snapshot(checkout: Checkout) -> Snapshot:
    return Snapshot(
        revision=checkout.revision, root=checkout.root, config_path=checkout.config_path, index=checkout.index
    )


def require_source(settings: Settings, scratch: Path | None = None) -> Source:
    """The configured source; with `scratch` (read-only commands) it keeps its clone, revisions
    and source.json there instead of in the state dir, borrowing the state's clone's objects."""
    if not settings.repo:
        raise RuntimeError_("this command needs --repo URL|PATH (the git repository holding the service configs)")
    try:
        if scratch is not None:
            return make_source(
                settings.repo, settings.branch, scratch, settings.path, settings.watch, borrow_from=settings.state_dir
            )
        return make_source(settings.repo, settings.branch, settings.state_dir, settings.path, settings.watch)
    except SourceError as e:
        raise RuntimeError_(str(e)) from e


def build_previews(settings: Settings, args: argparse.Namespace | None, source: Source, engine: Engine) -> PreviewProvider | None:
    """The preview provider for `up` when previews are enabled (`--previews` or the settings file's
    `previews: {enabled: true}`), else None. Needs a git remote: PR refs live there."""
    from reconciler.previews.github import GitHubClient, GitHubSettings
    from reconciler.previews.loop import PreviewProvider
    from reconciler.previews.pr_source import PullRequestSource
    from reconciler.previews.wiring import PreviewSettingsError, preview_settings

    try:
        prefs = preview_settings(args, settings.previews_section)
    except PreviewSettingsError as e:
        raise RuntimeError_(str(e)) from e
    if not prefs.enabled:
        return None
    if not isinstance(source, GitSource):
        raise RuntimeError_("previews need a git remote (--repo URL): pull-request refs live there, not in --watch folders")
    gh = GitHubSettings.from_env(settings.env, settings.repo)
    return PreviewProvider(
        PullRequestSource.beside(source),
        prefs,
        settings.branch,
        env=settings.env,
        salt=engine.installation.salt,
        backends=engine.backends,
        domain=settings.domain,
        github=GitHubClient(gh) if gh is not None and gh.token else None,
        url_base=settings.service_url("{name}"),
    )


def build_orphan_sweeper(engine: Engine, grace: float = 900.0) -> OrphanSweeper | None:
    """A sweeper over the cloud backends (the local backend's replicas are adopted, not swept)."""
    from backends.cloud.backend import CloudBackend

    clouds = [b for b in engine.backends.all() if isinstance(b, CloudBackend)]
    if not clouds:
        return None
    return OrphanSweeper(
        clouds, engine.installation.id, grace=grace, seen_file=engine.state_dir / "gc-seen.json"
    )


def build_housekeeping(engine: Engine) -> Callable[[], list[Path]]:
    """The litter collection `up` runs on start and periodically (reconciler.engine.housekeeping)."""
    from reconciler.engine.housekeeping import collect_litter

    return lambda: collect_litter(engine.state_dir, engine.backends)


def build_deploy_reporter(settings: Settings) -> StatusReporter | None:
    """Commit statuses on the deployed commit, when a GitHub repository and token are configured."""
    from reconciler.previews.github import GitHubClient, GitHubSettings, StatusReporter

    gh = GitHubSettings.from_env(settings.env, settings.repo)
    return StatusReporter(GitHubClient(gh)) if gh is not None and gh.token else None


class VerifiedInbox:
    """Webhooks the in-process gateway verified (HMAC), queued for the pass thread.

    The gateway's thread puts (event, payload); the pass takes them at its start. This, not a file
    in `<state>/signals/`, is how webhook facts about a PR reach the reconciler: a file proves
    nothing about who wrote it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[tuple[str, dict[str, Any]]] = []

    def put(self, event: str, payload: dict[str, Any]) -> None:
        with self._lock:
            self._items.append((event, payload))

    def take(self) -> list[tuple[str, dict[str, Any]]]:
        with self._lock:
            items, self._items = self._items, []
        return items


@dataclass
class Pass:
    """The loop's job: apply queued stop/start signals, fetch, reconcile. Runs on one thread.

    With previews: PR webhooks' signals are saved, the previews are decided again after every
    fetch (before the reconcile, which adds them to the desired set) and their commit statuses
    posted after it; with a GitHub token the deployed commit gets a status too."""

    engine: Engine
    source: Source
    take_signals: Callable[[], list[dict[str, Any]]]
    on_report: Callable[[PassReport], None] | None = None
    # Fetch at most this often unless woken (push webhook, SIGHUP, a save): passes come much more
    # often while replicas start (readiness), and a remote must not be fetched at that rate.
    fetch_every: float = 0.0
    clock: Callable[[], float] = time.monotonic
    last: Checkout | None = None
    last_fetch: float | None = None
    fetch_requested: bool = True
    source_error: str | None = None
    reports: int = 0
    previews: PreviewProvider | None = None
    deploy_reporter: StatusReporter | None = None
    status_url: str | None = None  # target_url of the deployed commit's status (the gateway)
    wall: Callable[[], float] = time.time  # previews' TTLs are wall-clock times
    # After a failed status post, GitHub is left alone this long: a down API must not add its
    # timeout to every pass (passes come twice a second while replicas start).
    status_retry_after: float = 60.0
    _statuses_paused_until: float = 0.0
    # Orphan sweep (cloud backends): owned instances the state does not know are deleted after
    # the sweeper's grace period; run at most every `sweep_every` seconds, after a pass.
    sweeper: OrphanSweeper | None = None
    sweep_every: float = 600.0
    verified: VerifiedInbox | None = None  # webhooks the in-process gateway checked
    _last_sweep: float | None = None
    # Housekeeping (reconciler.engine.housekeeping.collect_litter over this engine's state dir and
    # backends): on the first pass, then at most every `housekeeping_every` seconds.
    housekeeping: Callable[[], list[Path]] | None = None
    housekeeping_every: float = 600.0
    _last_housekeeping: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self) -> float | None:
        with self._lock:
            for event, payload in self.verified.take() if self.verified is not None else ():
                if self.previews is not None:
                    self.previews.note_verified(event, payload)
            for sig in self.take_signals():
                self._apply_signal(sig)
            now = self.clock()
            due = self.last_fetch is None or now - self.last_fetch >= self.fetch_every
            fetched = False
            try:
                if self.fetch_requested or due or self.last is None:
                    self.fetch_requested = False
                    self.last_fetch = now
                    fetched = True
                    self.last = self.source.current()
                    self.source_error = None
            except (SourceError, OSError) as e:
                # Keep reconciling the last good revision: drift repair must not wait on the remote
                # (nor on a full disk, which the engine reports and holds on by itself).
                message = describe_os_error(e) if isinstance(e, OSError) else str(e)
                if self.source_error != message:
                    log.warning("source: %s", message)
                self.source_error = message
            # Without any checkout yet (remote down at start) the engine reconciles the last
            # revision it applied (from its state), so drift is still repaired.
            if self.previews is not None and fetched and self.last is not None:
                # PR refs are fetched as often as the branch (not on every readiness re-check).
                try:
                    self.previews.refresh(self.last, self.wall())
                except Exception:  # previews must never hold production's reconcile back
                    log.exception("previews: refresh failed; keeping the previous previews")
            # Backend work runs on the engine's workers; the pass never waits for it (a worker
            # that settles wakes the loop: `up` wires `engine.on_settled`).
            report = self.engine.reconcile(to_snapshot(self.last) if self.last is not None else None, wait=False)
            self._post_statuses(report)
            self._sweep_orphans(now)
            self._housekeeping(now)
            self.reports += 1
            if self.on_report is not None:
                self.on_report(report)
            return report.wake_in

    def _sweep_orphans(self, now: float) -> None:
        if self.sweeper is None or (self._last_sweep is not None and now - self._last_sweep < self.sweep_every):
            return
        self._last_sweep = now
        known = read_known_replica_ids(self.engine.state_dir / "state.json")
        if known is None:
            return  # no state written yet: never treat every instance as an orphan
        try:
            swept = self.sweeper.sweep(known)
        except Exception:  # the sweep must never hold the reconcile loop back
            log.exception("orphan sweep failed")
            return
        for error in swept.errors:
            log.warning("orphan sweep: %s", error)

    def _housekeeping(self, now: float) -> None:
        last = self._last_housekeeping
        if self.housekeeping is None or (last is not None and now - last < self.housekeeping_every):
            return
        self._last_housekeeping = now
        try:
            removed = self.housekeeping()
        except OSError as e:  # housekeeping must never hold the reconcile loop back
            log.warning("housekeeping: %s", describe_os_error(e))
            return
        if removed:
            shown = ", ".join(str(p) for p in removed[:3]) + (" …" if len(removed) > 3 else "")
            log.info("housekeeping: removed %d leftover files (%s)", len(removed), shown)

    def request_fetch(self, reason: str = "") -> None:
        """The next pass fetches even if the interval has not elapsed (a wake-up from outside)."""
        log.debug("fetch requested%s", f" ({reason})" if reason else "")
        self.fetch_requested = True

    def _post_statuses(self, report: PassReport) -> None:
        if self.clock() < self._statuses_paused_until:
            return
        errors: list[str] = []
        if self.previews is not None:
            errors += self.previews.report(read_snapshot(self.engine.state_dir))
        if self.deploy_reporter is not None and report.revision and self.last is not None:
            from reconciler.previews.github import deploy_status_update

            previews = self.previews.preview_prs() if self.previews is not None else {}
            with self.engine.lock:  # workers edit the records beside this thread
                views = status_views(self.engine.doc)
            counts = {v.name: (v.ready, 0 if v.stopped else v.desired) for v in views if v.name not in previews}
            update = deploy_status_update(report.revision, counts, report.errors, self.status_url)
            errors += self.deploy_reporter.post([update])
        for e in errors:
            log.warning("GitHub status: %s", e)
        if errors:
            self._statuses_paused_until = self.clock() + self.status_retry_after

    def _apply_signal(self, sig: dict[str, Any]) -> None:
        kind, service = sig.get("kind"), sig.get("service")
        if kind == "wake" and self.previews is not None:
            self.previews.note_signal(sig)
        elif kind in ("stop", "start") and isinstance(service, str):
            try:
                if kind == "stop":
                    self.engine.stop_service(service)
                else:
                    self.engine.start_service(service)
                log.info("%s %s (asked from another terminal)", kind, service)
            except Exception as e:  # an unknown name must not break the pass
                log.warning("cannot %s %s: %s", kind, service, e)
        elif kind == "demand" and isinstance(service, str):
            self.engine.note_demand(service)
