"""The commands that run passes in this process: `apply` (reconcile, wait, exit) and `up` (the loop
and the gateway until Ctrl-C). `plan` is in plan_cmd.py; `ps`, `logs`, `stop`, `start` in commands.py.

Each handler builds `Settings` once from its arguments (and the environment, read only there) and
returns an exit code.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from gateway.options import add_gateway_options
from reconciler.cli.common import EXIT_ERROR, EXIT_OK, command_settings, fail, record_env_file
from reconciler.cli.next_steps import print_next_steps
from reconciler.cli.output import say
from reconciler.cli.settings import SettingsError, add_common_options, publish_gateway_address
from reconciler.engine.plan import Plan
from reconciler.previews.wiring import add_preview_options
from reconciler.render.plan_output import render_report
from reconciler.source.checkout import SourceError
from reconciler.state.errors import ReconcilerError, StateLockedError
from reconciler.state.redact import mask_logs
from tidegate.routes_io import read_snapshot

if TYPE_CHECKING:
    from reconciler.engine.reconcile import PassReport


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("apply", help="reconcile, wait for started replicas, exit")
    add_common_options(p, gateway=True)
    p.add_argument(
        "--wait", type=float, default=300.0, metavar="SECONDS", help="max wait for replicas to settle (0: one pass)"
    )
    p.set_defaults(func=cmd_apply)

    p = subparsers.add_parser("up", help="run the reconciler loop and the gateway until Ctrl-C")
    add_common_options(p, gateway=True)
    p.add_argument("--no-gateway", action="store_true", help="run only the reconciler loop")
    p.add_argument(
        "--log-format", choices=["text", "json"], default="text",
        help="text (default) or json: one JSON object per line (time, level, logger, message, service, event, detail)",
    )  # fmt: skip
    p.add_argument(
        "--control-open-reads",
        action="store_true",
        help="let loopback clients read the control API and dashboard without a token (actions still need one)",
    )
    add_gateway_options(p)
    add_preview_options(p)
    p.set_defaults(func=cmd_up)


class JsonLogFormatter(logging.Formatter):
    """`up --log-format json`: one object per line for log shippers; the event fields the engine
    attaches (`service`, `event`, `detail`) become keys of their own."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("service", "event", "detail"):
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def _logging(verbose: bool = False, fmt: str = "text") -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if fmt == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonLogFormatter())
    for noisy in ("apscheduler", "httpx", "httpcore", "watchfiles"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# --- apply -----------------------------------------------------------------------------------


def cmd_apply(args: argparse.Namespace) -> int:
    from reconciler.cli import runtime
    _logging()
    try:
        settings = command_settings(args)
        source = runtime.require_source(settings)
        checkout = source.current()
        engine = runtime.build_engine(settings)
        mask_logs(engine.secrets)
        try:
            engine.recover()
            record_env_file(settings.state_dir, settings.env_file)
            snapshot = runtime.to_snapshot(checkout)
            report = engine.reconcile(snapshot)
            applied = list(report.plan.steps)  # every pass's steps: the report says what was done
            changes = dict(report.plan.changes)
            deadline = time.monotonic() + args.wait
            # Like `terraform apply`, wait for what was started to become ready (or fail); replicas
            # keep running after exit either way.
            while report.next_run_in is not None and time.monotonic() < deadline:
                time.sleep(min(report.next_run_in, 2.0))
                report = engine.reconcile(snapshot)
                applied += report.plan.steps
                changes.update(report.plan.changes)
            report = replace(report, plan=Plan(steps=tuple(applied), changes=changes))
        finally:
            engine.close()
    except (SettingsError, SourceError, ReconcilerError, runtime.RuntimeError_) as e:
        return fail(str(e))
    print(render_report(report))
    if engine.state_fault is not None:  # nothing was applied: say why, and fail
        say(f"error: {engine.state_fault}", stream=sys.stderr, style="red")
        return EXIT_ERROR
    return EXIT_ERROR if report.errors else EXIT_OK


# --- up --------------------------------------------------------------------------------------

DEMAND_WAKE = "demand"  # the in-process gateway holds a request for a service at zero


def cmd_up(args: argparse.Namespace) -> int:
    from reconciler.cli import runtime, serving
    from reconciler.engine.loop import Loop

    _logging(fmt=getattr(args, "log_format", "text"))
    try:
        settings = command_settings(args)
        if settings.etcd is not None:  # shared state: lead or stand by (reconciler.cli.ha)
            from reconciler.cli.ha import HaUp

            return HaUp(settings, settings.etcd, args).run()
        source = runtime.require_source(settings)
        engine = runtime.build_engine(settings)
        engine.recover()  # takes the lock: a second `up` stops here, naming the holder
        mask_logs(engine.secrets)  # up's own log: every secret value masked, whatever quotes it
        record_env_file(settings.state_dir, settings.env_file)
        try:
            previews = runtime.build_previews(settings, args, source, engine)
        except runtime.RuntimeError_:
            engine.close()
            raise
        engine.extension = previews
    except StateLockedError as e:
        return fail(str(e))
    except (SettingsError, SourceError, ReconcilerError, runtime.RuntimeError_) as e:
        return fail(str(e))

    gateway: serving.GatewayThread | None = None
    loop: Loop | None = None
    control_stop = threading.Event()
    verified = runtime.VerifiedInbox()
    try:
        if not args.no_gateway:
            control = serving.build_control(settings, engine, control_stop)
            gateway = serving.GatewayThread(settings, verified, control)
            if not gateway.start():
                return fail(f"gateway: {gateway.error}")
            publish_gateway_address(settings)
        announced: list[frozenset[str]] = []

        def on_report(report: PassReport) -> None:
            routes = read_snapshot(settings.state_dir)
            if gateway is not None and report.wrote_routes:
                # A request held for a cold start goes the moment its replica is ready, not when
                # the gateway's file watcher notices routes.json.
                gateway.publish(routes)
            # Tell the newcomer what to do once something answers; later, one line per service that joins.
            ready = frozenset(n for n, r in routes.services.items() if r.upstreams)
            if not announced and (ready or report.next_run_in is None):
                announced.append(ready)
                print_next_steps(settings, gateway is not None)
            elif announced and ready - announced[-1]:
                print_next_steps(settings, gateway is not None, only=ready - announced[-1])
                announced.append(ready | announced[-1])

        signals: list[Loop] = []  # the pass drains signals through the loop built right after it
        the_pass = runtime.Pass(
            engine,
            source,
            lambda: signals[0].take_signals(),
            on_report=on_report,
            fetch_every=settings.interval * 0.8,  # a timer tick (jittered +-10%) always fetches
            previews=previews,
            deploy_reporter=runtime.build_deploy_reporter(settings),
            status_url=settings.gateway_url,
            sweeper=runtime.build_orphan_sweeper(engine),
            housekeeping=runtime.build_housekeeping(engine),
            verified=verified,
        )
        def on_wake(reason: str) -> None:
            if reason not in (DEMAND_WAKE, "signal: demand"):  # a held request needs no git fetch
                the_pass.request_fetch(reason)

        loop = Loop(the_pass, settings.interval, state_dir=settings.state_dir, on_wake=on_wake)
        signals.append(loop)
        if gateway is not None:
            gateway.on_demand(lambda service: loop.wake(DEMAND_WAKE) if loop is not None else None)
        # A service's backend work settled on a worker: a pass probes, saves and routes it now
        # (no fetch: nothing changed upstream).
        engine.on_settled = lambda name: loop.wake(f"{name}: backend work settled", fetch=False)
        if hasattr(source, "watch"):
            loop.add_watcher(source.watch(lambda: loop.wake("file saved"), loop.stop_event))
        say(f"tidegate up: watching {source.describe()} (state {settings.state_dir}); Ctrl-C stops, replicas keep running")
        if previews is not None:
            say(f"previews: open pull requests get <service>-pr-<N>.{settings.domain} ({previews.settings.max_concurrent} at most)")
        if gateway is not None and settings.gateway_options.get("https_listen"):
            certs = "ACME" if settings.gateway_options.get("acme_email") else str(settings.gateway_options.get("tls_cert"))
            say(f"HTTPS on {settings.gateway_options['https_listen']}: {settings.service_url('<name>')}, "
                f"OpenAI API at {settings.service_url('gateway')} (certificates: {certs})")
        loop.start()
        loop.run()
    finally:
        if loop is not None:
            loop.shutdown()
        control_stop.set()
        if gateway is not None:
            gateway.stop()
        engine.close()
    say("tidegate stopped; replicas keep running (the next `tidegate up` adopts them)")
    return EXIT_OK
