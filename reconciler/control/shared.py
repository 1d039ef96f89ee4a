"""The control plane of one `tidegate up` among several on one etcd prefix: `SharedControlPlane`.

Every `up` on etcd serves the control API and dashboard, leader or standby, so a load balancer
(or a person) may reach any of them:

- while this `up` leads (its engine attached), everything is answered as with a state directory:
  reads from the engine's working copy, replica logs and offers from its backends, stop/start/sync
  as a signal file its loop applies at once;
- while it stands by, reads come from the shared state on etcd (state.json, previews, every
  gateway's stats), copied into a private folder at most once a second; stop/start/sync are
  *forwarded* to the leader as a signal under `signals/` on etcd — the path `tidegate stop
  --state etcd://…` takes — and the answer (202) names the leader. With no leader at that moment
  the action is refused with a 503 (nobody would apply it now). Replica logs and offers need the
  leader's backends: a 503 naming the leader.

Why forward through etcd rather than proxy to the leader's HTTP address: the leader's address as
seen from the standby is not known (the lease holds `host:pid`; listen addresses are often
0.0.0.0, behind NAT or TLS), while etcd is reachable from every `up` by construction; the leader
takes signals from etcd within 0.2 s, and a signal posted during a takeover is applied by the
next leader rather than lost with a proxied connection.

Tokens are etcd's on every node: create/revoke is one guarded transaction on `tokens.json`
(gateway.etcd_cli.shared_tokens); every gateway's feed carries it within a second.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from backends.base import Requirements
from gateway.access.tokens import TokenError, TokenScope, create_token, revoke_token
from gateway.etcd_cli import SharedTokensError, shared_tokens
from reconciler.control import models as m
from reconciler.control.plane import Conflict, ControlPlane, NotFound, Unavailable
from reconciler.state.errors import StateError
from reconciler.state.etcd_store import EtcdStore
from reconciler.state.etcd_sync import PULLED_DOCS, REMOTE_STATS, leader_of, post_signal
from tidegate.etcd import PREVIEWS_PREFIX, STATS_PREFIX, EtcdError
from tidegate.fsio import write_atomic
from tidegate.stats_file import STATS_DIR

REFRESH_EVERY = 1.0  # seconds a standby's copy of the shared state is reused


class SharedControlPlane(ControlPlane):
    def __init__(self, local_dir: Path, shared: EtcdStore, **options: Any) -> None:
        self._local = Path(local_dir)
        self.shared = shared
        self._copy = Path(tempfile.mkdtemp(prefix="tidegate-control-"))  # 0700: tokens.json lands here
        self._copied_at = 0.0
        self._copy_lock = threading.Lock()
        self._leading = False
        super().__init__(self._local, **options)

    # -- which copy answers ----------------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        if self._leading:
            return self._local
        self._refresh()
        return self._copy

    @state_dir.setter
    def state_dir(self, value: Path) -> None:
        self._local = Path(value)

    def lead(self, logs_of: Any, offers_for: Any) -> None:
        """This `up` leads now: answer from its engine (until `stand_by`)."""
        self.logs_of, self.offers_for = logs_of, offers_for
        self._leading = True

    def stand_by(self) -> None:
        self._leading = False
        self.logs_of = self.offers_for = None
        self._copied_at = 0.0

    def close(self) -> None:
        shutil.rmtree(self._copy, ignore_errors=True)

    def _refresh(self) -> None:
        with self._copy_lock:
            if time.monotonic() - self._copied_at < REFRESH_EVERY:
                return
            try:
                docs = {name: self.shared.get(name) for name in PULLED_DOCS}
                docs.update(self.shared.list(PREVIEWS_PREFIX))
                stats = self.shared.list(STATS_PREFIX)
            except StateError as e:
                raise Unavailable(f"{e} (this tidegate stands by; the shared state answers its reads)") from e
            for name, body in docs.items():
                path = self._copy / name
                if body is None:
                    path.unlink(missing_ok=True)
                    continue
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                write_atomic(path, body, mode=0o600)
            folder = self._copy / STATS_DIR
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(mode=0o700, parents=True)
            for name, body in stats.items():
                write_atomic(folder / f"{REMOTE_STATS}{name.removeprefix(STATS_PREFIX)}", body, mode=0o600)
            self._copied_at = time.monotonic()

    def _leader(self) -> str | None:
        try:
            return leader_of(self.shared)
        except EtcdError as e:
            raise Unavailable(f"cannot ask etcd who leads: {e}") from e

    def _standby_only(self, what: str) -> Unavailable:
        leader = self._leader()
        who = f"the leading tidegate ({leader})" if leader else "the leading tidegate (none right now)"
        return Unavailable(f"{what} are answered by {who}: this one stands by")

    # -- what needs the leader's backends --------------------------------------------------------
    def log_lines(self, service: str, replica: str | None, lines: int) -> m.LogLines:
        if not self._leading:
            doc = self._doc()
            if service not in doc.services or not doc.services[service].replicas:
                raise NotFound(f"no replicas for service {service!r}")
            raise self._standby_only("replica logs")
        return super().log_lines(service, replica, lines)

    def offers(self, requirements: Requirements, limit: int) -> list[m.OfferOut]:
        if not self._leading:
            raise self._standby_only("offers")
        return super().offers(requirements, limit)

    # -- actions: applied here when leading, forwarded through etcd when standing by -------------
    def act(self, kind: str, service: str) -> m.ActionResult:
        if self._leading:
            return super().act(kind, service)
        doc = self._doc()
        if service not in doc.services:
            raise NotFound(f"unknown service {service!r} (services: {', '.join(sorted(doc.services)) or 'none'})")
        leader = self._forward(kind, {"service": service})
        return m.ActionResult(
            action=kind, service=service, detail=f"forwarded to the leading tidegate ({leader}) to {kind} {service}"
        )

    def sync(self) -> m.ActionResult:
        if self._leading:
            return super().sync()
        leader = self._forward("wake", {"reason": "control API sync"})
        return m.ActionResult(
            action="sync", service=None, detail=f"forwarded to the leading tidegate ({leader}): it fetches and reconciles now"
        )

    def _forward(self, kind: str, payload: dict[str, Any]) -> str:
        leader = self._leader()
        if leader is None:
            raise Unavailable(
                f"no tidegate leads {self.shared.describe()} right now (a takeover takes a few seconds): try again"
            )
        try:
            post_signal(self.shared, kind, payload)
        except EtcdError as e:
            raise Unavailable(f"cannot forward {kind} to the leading tidegate ({leader}): {e}") from e
        return leader

    # -- tokens: etcd's, on every node -----------------------------------------------------------
    def create_token(self, name: str, admin: bool) -> m.TokenCreated:
        scope = TokenScope.ADMIN if admin else TokenScope.INFERENCE
        try:
            with self._tokens() as folder:
                token = create_token(folder, name, scope=scope)
        except TokenError as e:
            raise Conflict(str(e)) from e
        return m.TokenCreated(name=name, scope=str(scope), token=token)

    def revoke_token(self, name: str) -> None:
        try:
            with self._tokens() as folder:
                revoke_token(folder, name)
        except TokenError as e:
            raise NotFound(str(e)) from e

    @contextlib.contextmanager
    def _tokens(self) -> Iterator[Path]:
        try:
            with shared_tokens(self.shared.location) as folder:
                yield folder
        except SharedTokensError as e:
            raise Unavailable(str(e)) from e
        self._copied_at = 0.0
