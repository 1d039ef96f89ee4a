"""What the control API reads and does, over the state directory: `ControlPlane`.

Why a class apart from the HTTP layer: every answer is a projection of files the running `up`
already publishes (state.json through `status_views` — the rows `tidegate ps` prints —, the
preview decision, source.json, the gateway's stats files, tokens.json), and every action is what
the CLI does from a second terminal (a signal file the loop applies at once). Keeping that here
lets the controllers stay thin and lets tests drive it without HTTP. The two things that need a
live backend (a replica's log lines, offers) come in as callables from the CLI wiring.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from backends.base import Offer, Requirements
from gateway.access.tokens import TokenError, TokenScope, create_token, load_records, revoke_token
from reconciler.control import models as m
from reconciler.control.commits import CommitInfo, CommitLookup
from reconciler.engine.stats import read_stats
from reconciler.previews.pr_source import read_decision
from reconciler.source.checkout import read_source
from reconciler.state.errors import ReconcilerError
from reconciler.state.records import HistoryEntry, ServiceRecord, StateDoc
from reconciler.state.store import StateStore
from reconciler.state.view import ServiceView, status_views
from tidegate.routes_io import read_snapshot
from tidegate.signals import send_signal

LogReader = Callable[[str, str, int], list[str]]  # (backend, replica id, lines) -> last lines
OfferFinder = Callable[[Requirements], list[Offer]]
SAMPLES = 720  # per service: an hour at one sample per 5 s


class ControlError(Exception):
    """A request the control plane cannot serve; `status` and `code` become the API's error shape."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(ControlError):
    status = 404
    code = "not_found"


class Conflict(ControlError):
    status = 409
    code = "conflict"


class Unavailable(ControlError):
    status = 503
    code = "unavailable"


class ControlPlane:
    # A plain class, not a dataclass: Litestar's signature model would try to validate a dataclass
    # dependency field by field (and its lock).
    def __init__(
        self,
        state_dir: Path,
        domain: str = "localhost",
        port: int = 8080,
        logs_of: LogReader | None = None,
        offers_for: OfferFinder | None = None,
        pr_url_base: str | None = None,  # https://github.com/<owner>/<repo>/pull/
        clock: Callable[[], float] = time.time,
        commits: CommitLookup | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.domain = domain
        self.port = port
        self.logs_of = logs_of
        self.offers_for = offers_for
        self.pr_url_base = pr_url_base
        self.clock = clock
        self.commits = commits or CommitLookup(None)
        self._series: dict[str, deque[m.SamplePoint]] = {}
        self._validation: tuple[str, list[m.ValidationOut]] | None = None
        self._lock = threading.Lock()

    # -- reads ---------------------------------------------------------------------------------
    def _doc(self) -> StateDoc:
        try:
            return StateStore(self.state_dir).load()
        except ReconcilerError as e:
            raise Unavailable(str(e)) from e

    def _url(self, host: str | None) -> str | None:
        return f"http://{host}:{self.port}" if host else None

    def _commit(self, revision: str | None) -> CommitInfo | None:
        return self.commits.get(revision) if revision else None

    def _summary(self, view: ServiceView, rec: ServiceRecord, rps: float, preview_pr: int | None) -> m.ServiceSummary:
        reason = view.reason
        diagnostics = [f"{r.id}: {r.last_error}" for r in view.replicas if r.last_error]
        if not reason and diagnostics:
            reason = diagnostics[0]  # as `ps` does
        commit = self._commit(view.revision)
        return m.ServiceSummary(
            name=view.name,
            status=view.status,
            reason=reason,
            revision=view.revision,
            commit_subject=commit.subject if commit else None,
            ready=view.ready,
            desired=0 if view.stopped else view.desired,
            url=self._url(view.host),
            model=rec.route.model.name if rec.route and rec.route.model else None,
            cost_per_hour=round(view.cost_per_hour, 4),
            rps=round(rps, 3),
            backends=sorted({r.backend for r in view.replicas} or ({rec.backend} if rec.backend else set())),
            stopped=view.stopped,
            preview_pr=preview_pr,
            diagnostics=diagnostics,
        )

    def _summaries(self, doc: StateDoc) -> list[m.ServiceSummary]:
        now = self.clock()
        stats = read_stats(self.state_dir, now)
        try:
            prs = {n: r.preview_pr for n, r in read_snapshot(self.state_dir).services.items()}
        except (OSError, ValueError):
            prs = {}
        out = []
        for view in status_views(doc):
            st = stats.get(view.name)
            out.append(self._summary(view, doc.services[view.name], st.rps_30 if st else 0.0, prs.get(view.name)))
        return out

    def services(self) -> list[m.ServiceSummary]:
        return self._summaries(self._doc())

    def overview(self) -> m.Overview:
        doc = self._doc()
        services = self._summaries(doc)
        src = read_source(self.state_dir)
        self.sample(services)
        return m.Overview(
            source=_str(src.get("source")),
            revision=_str(src.get("revision")),
            source_error=_str(src.get("error")),
            cost_per_hour=round(sum(s.cost_per_hour for s in services), 4),
            services=services,
            previews=self.previews(),
            validation=self.validation(doc),
        )

    def validation(self, doc: StateDoc) -> list[m.ValidationOut]:
        """Errors and warnings of the config files at the revision the engine last loaded (its
        checkout in the state dir), parsed once per revision."""
        snap = doc.last_snapshot
        if snap is None:
            return []
        key = f"{snap.revision}:{snap.root}:{snap.config_path}"
        if self._validation is not None and self._validation[0] == key:
            return self._validation[1]
        root = Path(snap.root)
        if not root.is_dir():
            return []
        from reconciler.config.loader import load_tree

        result = load_tree(root, snap.config_path)
        found = [
            m.ValidationOut(path=d.path, line=d.line, column=d.column, field=d.field, message=d.message, severity=str(d.severity))
            for d in result.diagnostics
        ]
        self._validation = (key, found)
        return found

    def service(self, name: str) -> m.ServiceDetail:
        doc = self._doc()
        rec = doc.services.get(name)
        if rec is None:
            raise NotFound(f"no service named {name!r} (services: {', '.join(sorted(doc.services)) or 'none'})")
        summary = next(s for s in self._summaries(doc) if s.name == name)
        view = next(v for v in status_views(doc) if v.name == name)
        now = self.clock()
        deploys = self._deploys(rec, summary.status)
        return m.ServiceDetail(
            service=summary,
            replicas=[
                m.ReplicaOut(
                    id=r.id,
                    ordinal=r.ordinal,
                    backend=r.backend,
                    phase=r.phase,
                    current=r.current,
                    address=r.address,
                    offer=r.offer,
                    price=r.price,
                    age_seconds=round(now - r.started_at, 1) if r.started_at else None,
                    attempts=r.attempts,
                    error=r.last_error,
                    probe_failures=r.probe_failures,
                )
                for r in view.replicas
            ],
            scaling=[m.ScalingOut(at=s.at, previous=s.previous, count=s.count, reason=s.reason) for s in rec.scaling],
            scaling_now=view.scaling_now,
            scaling_pending=view.scaling_pending,
            deploys=deploys,
            plan_diff=deploys[0].diff if deploys else None,
            spec=dict(rec.spec_summary),
            history=[m.EventOut(at=h.at, event=h.event, detail=h.detail) for h in reversed(rec.history)],
            series=list(self._series.get(name, ())),
        )

    def _deploys(self, rec: ServiceRecord, status: str) -> list[m.DeployOut]:
        """Newest first: the service's creation and every change of its spec, with the diff recorded
        then and what followed (ready replicas, an error, or the current status for the latest)."""
        marks = [i for i, h in enumerate(rec.history) if h.event in ("created", "deployed")]
        out: list[m.DeployOut] = []
        for n, i in enumerate(marks):
            entry = rec.history[i]
            after = rec.history[i + 1 : marks[n + 1] if n + 1 < len(marks) else None]
            revision, diff = parse_deploy(entry)
            if entry.event == "created":
                diff = [f"+ {k}: {v}" for k, v in sorted(rec.spec_summary.items())] if n + 1 == len(marks) else []
            commit = self._commit(revision)
            out.append(
                m.DeployOut(
                    at=entry.at,
                    revision=revision,
                    subject=commit.subject if commit else None,
                    author=commit.author if commit else None,
                    outcome=_outcome(after, status if n + 1 == len(marks) else None),
                    diff=diff,
                )
            )
        return out[::-1]

    def previews(self) -> m.Previews:
        decision = read_decision(self.state_dir)
        previews = []
        for p in decision["previews"]:
            pr = p.get("pr") if isinstance(p.get("pr"), int) else None
            name = str(p.get("name"))
            note = f"model {p['model']}" if p.get("model") else ""
            if p.get("withheld_env"):
                note = (note + "; " if note else "") + "secrets withheld: " + ", ".join(map(str, p["withheld_env"]))
            previews.append(
                m.PreviewOut(
                    name=name,
                    pr=pr,
                    head_sha=_str(p.get("head_sha")),
                    expires_at=float(p["expires_at"]) if isinstance(p.get("expires_at"), int | float) else None,
                    url=self._url(f"{name}.{self.domain}"),
                    pr_url=f"{self.pr_url_base}{pr}" if self.pr_url_base and pr is not None else None,
                    note=note,
                )
            )
        rejected = [
            m.RejectedOut(
                pr=r.get("pr") if isinstance(r.get("pr"), int) else None,
                reason=str(r.get("reason") or ""),
                service=_str(r.get("service")),
                detail=str(r.get("detail") or ""),
            )
            for r in decision["rejected"]
        ]
        return m.Previews(previews=previews, rejected=rejected)

    def offers(self, requirements: Requirements, limit: int) -> list[m.OfferOut]:
        if self.offers_for is None:
            raise Unavailable("offers are answered by `tidegate up` (no backends here)")
        return [
            m.OfferOut(
                backend=o.backend,
                region=o.region,
                instance_type=o.instance_type,
                cpus=o.cpus,
                memory_gb=o.memory_gb,
                gpu=f"{o.gpu.name}:{o.gpu.memory_gb:g}GB:{o.gpu.count}" if o.gpu else None,
                spot=o.spot,
                price=o.price,
            )
            for o in self.offers_for(requirements)[:limit]
        ]

    def log_lines(self, service: str, replica: str | None, lines: int) -> m.LogLines:
        doc = self._doc()
        rec = doc.services.get(service)
        if rec is None or not rec.replicas:
            raise NotFound(f"no replicas for service {service!r}")
        ordered = sorted(rec.replicas, key=lambda r: (r.ordinal, -(r.created_at or 0)))
        chosen = ordered[0] if replica is None else next((r for r in ordered if replica in (r.id, str(r.ordinal))), None)
        if chosen is None:
            raise NotFound(f"{service} has no replica {replica!r} (replicas: {', '.join(r.id for r in ordered)})")
        if self.logs_of is None:
            raise Unavailable("replica logs are answered by `tidegate up` (no backends here)")
        try:
            got = self.logs_of(chosen.backend, chosen.id, lines)
        except Exception as e:  # a backend failing to give logs is the caller's 503, never a 500
            raise Unavailable(f"cannot read logs of {chosen.id}: {e}") from e
        return m.LogLines(service=service, replica=chosen.id, lines=list(got))

    # -- tokens --------------------------------------------------------------------------------
    def tokens(self) -> list[m.TokenOut]:
        return [m.TokenOut(name=r.name, prefix=r.prefix, scope=str(r.scope), created_at=r.created_at) for r in load_records(self.state_dir)]

    def create_token(self, name: str, admin: bool) -> m.TokenCreated:
        scope = TokenScope.ADMIN if admin else TokenScope.INFERENCE
        try:
            token = create_token(self.state_dir, name, scope=scope)
        except TokenError as e:
            raise Conflict(str(e)) from e
        return m.TokenCreated(name=name, scope=str(scope), token=token)

    def revoke_token(self, name: str) -> None:
        try:
            revoke_token(self.state_dir, name)
        except TokenError as e:
            raise NotFound(str(e)) from e

    # -- actions -------------------------------------------------------------------------------
    def act(self, kind: str, service: str) -> m.ActionResult:
        """`stop`/`start`: the same signal `tidegate stop` drops for a running `up` (applied at once)."""
        doc = self._doc()
        if service not in doc.services:
            raise NotFound(f"unknown service {service!r} (services: {', '.join(sorted(doc.services)) or 'none'})")
        send_signal(self.state_dir, kind, {"service": service})
        return m.ActionResult(action=kind, service=service, detail=f"asked the reconciler to {kind} {service}")

    def sync(self) -> m.ActionResult:
        """Fetch and reconcile now: the wake signal a push webhook sends."""
        send_signal(self.state_dir, "wake", {"reason": "control API sync"})
        return m.ActionResult(action="sync", service=None, detail="the reconciler fetches and reconciles now")

    # -- the rps/replicas series ---------------------------------------------------------------
    def sample(self, services: Sequence[m.ServiceSummary] | None = None, min_gap: float = 4.0) -> None:
        """Remember each service's rps and ready count (at most one sample per `min_gap` seconds)."""
        now = self.clock()
        rows = self.services() if services is None else services
        with self._lock:
            for s in rows:
                series = self._series.setdefault(s.name, deque(maxlen=SAMPLES))
                if series and now - series[-1].at < min_gap:
                    continue
                series.append(m.SamplePoint(at=now, rps=s.rps, ready=s.ready))


def parse_deploy(entry: HistoryEntry) -> tuple[str | None, list[str]]:
    """(revision, diff lines) of a `created`/`deployed` history entry (see engine.targets.deploy_detail)."""
    head, *changes = entry.detail.split("; ")
    revision = head.removeprefix("revision ").strip() if head.startswith("revision ") else None
    return (revision if revision and revision not in ("-", "None") else None), [f"~ {c}" for c in changes]


def _outcome(after: Sequence[HistoryEntry], current: str | None) -> str:
    for h in after:
        if h.event in ("stalled", "error"):
            return f"failed: {h.detail}"
    if current is not None:
        return current
    return "rolled out" if any(h.event == "replica ready" for h in after) else "superseded"


def _str(value: Any) -> str | None:
    return str(value) if value is not None else None
