"""What `tidegate up` serves besides the loop: the gateway in a thread of the `up` process, with
the control API and dashboard mounted into it.

Why a module of its own: the wiring of the engine and its pass (`runtime`) and the wiring of the
HTTP side are separate concerns; `up` (and the standby side of `ha`) starts both.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from reconciler.cli.runtime import VerifiedInbox
from reconciler.cli.settings import Settings
from reconciler.engine.reconcile import Engine
from reconciler.state.etcd_store import EtcdStore

log = logging.getLogger("tidegate.runtime")


class GatewayThread:
    """The gateway's uvicorn server in a daemon thread of the `up` process (dies with it on kill -9,
    so a restarted `up` can bind the port again)."""

    def __init__(self, settings: Settings, verified: VerifiedInbox | None = None, control: Any = None) -> None:
        self.settings = settings
        self.verified = verified
        self.control = control  # the control API / dashboard app (build_control), mounted at /api/ and /ui/
        self.server: Any = None
        self.thread: threading.Thread | None = None
        self.error: str | None = None
        self.gateway: Any = None  # the gateway.core.Gateway serving in the thread
        self.acme: Any = None  # the ACME manager (gateway.tls.manager), with --acme-email

    def publish(self, snapshot: Any) -> None:
        """Hand a routes snapshot to the gateway at once (it also watches routes.json, later)."""
        if self.gateway is not None:
            self.gateway.set_snapshot(snapshot)

    def on_demand(self, wake: Callable[[str], None]) -> None:
        """Call `wake(service)` when the gateway holds a request for a service at zero."""
        if self.gateway is not None:
            self.gateway.cold.on_demand = wake

    def start(self, timeout: float = 15.0) -> bool:
        import uvicorn

        from gateway.server import uvicorn_options
        from gateway.settings import GatewaySettings
        from gateway.tls.listener import GatewayServer, start_acme

        gw = GatewaySettings(
            state_dir=self.settings.state_dir,
            host=self.settings.listen_host,
            port=self.settings.listen_port,
            domain=self.settings.domain,
            webhook_secret=self.settings.webhook_secret,
            **self.settings.gateway_options,
        )
        app = _gateway_app(gw, self.control)
        self.gateway = app.gateway
        if self.verified is not None:
            app.gateway.verified_events = self.verified.put
        config = uvicorn.Config(app, **uvicorn_options(gw))
        self.server = GatewayServer(config, gw.https_address)
        self.acme = start_acme(gw, self.server)

        def run() -> None:
            try:
                self.server.run()
            except BaseException as e:  # bind failures end the thread; `up` reports it
                self.error = f"{type(e).__name__}: {e}"

        self.thread = threading.Thread(target=run, name="tidegate-gateway", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server.started:
                return True
            if not self.thread.is_alive():
                self.error = self.error or f"the gateway could not listen on {self.settings.listen}"
                return False
            time.sleep(0.05)
        self.error = "the gateway did not start in time"
        return False

    def stop(self) -> None:
        if self.acme is not None:
            self.acme.stop()
        if self.server is not None:
            self.server.should_exit = True
        if self.thread is not None:
            # uvicorn cancels what still runs after the gateway's shutdown grace.
            self.thread.join(timeout=float(self.server.config.timeout_graceful_shutdown or 5) + 5 if self.server else 10)


def _gateway_app(gw: Any, control: Any = None) -> Any:
    from gateway.server import build_app

    return build_app(gw, control=control)


def backend_callables(engine: Engine) -> tuple[Callable[[str, str, int], list[str]], Callable[[Any], list[Any]]]:
    """What the control plane asks of the engine's backends: a replica's last log lines (masked,
    like `ps` and `logs` show them) and merged offers."""
    from backends.cloud.catalog import merge_offers

    backends = engine.backends

    def offers_for(requirements: Any) -> list[Any]:
        groups = []
        for b in backends.all():
            try:
                groups.append(list(b.offers(requirements)))
            except Exception as e:  # one cloud failing must not hide the others' offers
                log.warning("offers: %s: %s", b.name, e)
        return merge_offers(*groups)

    return engine.replica_logs, offers_for


def _plane_options(settings: Settings) -> dict[str, Any]:
    from reconciler.control.commits import CommitLookup
    from reconciler.source.checkout import REPOS_DIR

    return {
        "domain": settings.domain,
        "port": settings.listen_port,
        "pr_url_base": github_pr_base(settings.repo),
        "commits": CommitLookup(settings.state_dir / REPOS_DIR),
    }


def build_control(settings: Settings, engine: Engine, stop: threading.Event) -> Any:
    """The control API and dashboard over this state dir, with the engine's backends for logs and
    offers, and a thread sampling rps/replicas every 5 s for the dashboard's chart (ends with `stop`)."""
    from reconciler.control.plane import ControlPlane

    logs_of, offers_for = backend_callables(engine)
    plane = ControlPlane(settings.state_dir, logs_of=logs_of, offers_for=offers_for, **_plane_options(settings))
    return control_app(settings, plane, stop)


def build_shared_control(settings: Settings, shared: EtcdStore, stop: threading.Event) -> tuple[Any, Any]:
    """`up` on etcd: the control app and its SharedControlPlane (reconciler.control.shared), which
    answers from the engine while this `up` leads (`plane.lead(...)`) and from etcd while it stands by."""
    from reconciler.control.shared import SharedControlPlane

    plane = SharedControlPlane(settings.state_dir, shared, **_plane_options(settings))
    return control_app(settings, plane, stop), plane


def control_app(settings: Settings, plane: Any, stop: threading.Event) -> Any:
    from gateway.access.tokens import TokenStore
    from reconciler.control.app import build_control_app
    from reconciler.control.auth import ControlContext

    def sample() -> None:
        while not stop.wait(5.0):
            try:
                plane.sample()
            except Exception:  # the chart is a courtesy; never let it end the thread
                log.debug("control: sampling failed", exc_info=True)

    threading.Thread(target=sample, name="tidegate-control-sampler", daemon=True).start()
    ctx = ControlContext(
        plane=plane, tokens=TokenStore(settings.state_dir), open_reads=settings.control_open_reads, stopping=stop
    )
    return build_control_app(ctx)


def github_pr_base(repo: str | None) -> str | None:
    """`https://github.com/<owner>/<repo>/pull/` for a GitHub remote (https or scp-like ssh), else None."""
    if not repo:
        return None
    text = repo.removesuffix(".git")
    for prefix in ("https://github.com/", "http://github.com/", "git@github.com:", "ssh://git@github.com/"):
        if text.startswith(prefix):
            path = text[len(prefix):].strip("/")
            if path.count("/") == 1:
                return f"https://github.com/{path}/pull/"
    return None
