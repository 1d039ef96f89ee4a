"""The runtime commands: `apply`, `up`, `ps`, `logs`, `stop`, `start` (`plan` is in plan_cmd.py).

Each handler builds `Settings` once from its arguments (and the environment, read only there) and
returns an exit code. Every command finds the state directory the same way, so `ps`, `logs`,
`stop` and `start` in a second terminal act on a running `up`: reads need no lock (documents are
replaced whole), and `stop`/`start` either take the lock when nobody holds it or drop a signal
file that the running `up` applies on its next pass (woken at once).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.options import add_gateway_options
from reconciler.cli.next_steps import print_next_steps
from reconciler.cli.output import print_table, say
from reconciler.cli.settings import (
    Settings,
    SettingsError,
    add_common_options,
    build_settings,
    publish_gateway_address,
    running_gateway_listen,
    state_inside_repo,
)
from reconciler.control.tail import new_lines
from reconciler.engine.plan import Plan
from reconciler.previews.pr_source import read_decision
from reconciler.previews.wiring import PS_HEADERS, add_preview_options, ps_rows
from reconciler.render.plan_output import render_report
from reconciler.source.checkout import SourceError, read_source
from reconciler.state.errors import ReconcilerError, StateLockedError, StateUnreadableError
from reconciler.state.records import StateDoc
from reconciler.state.redact import SecretBook, mask_logs, withheld
from reconciler.state.store import StateStore
from tidegate.control_client import TOKEN_ENV, ControlClient, ControlClientError, server_from
from tidegate.etcd import EtcdError
from tidegate.fsio import write_json_atomic
from tidegate.routes_io import read_snapshot
from tidegate.signals import send_signal

if TYPE_CHECKING:
    from reconciler.engine.reconcile import PassReport
    from reconciler.state.view import ServiceView

log = logging.getLogger("tidegate")

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2


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

    p = subparsers.add_parser("ps", help="services, revision, replicas, URL, status")
    add_common_options(p, source=False, gateway=True)
    _add_mask_option(p)
    p.add_argument("--json", action="store_true")
    add_server_option(p)
    p.set_defaults(func=cmd_ps)

    p = subparsers.add_parser("logs", help="the last lines a service's replica wrote")
    add_common_options(p, source=False)
    _add_mask_option(p)
    p.add_argument("service")
    p.add_argument("--replica", type=int, default=None, metavar="N", help="replica ordinal (default: first)")
    p.add_argument("--lines", "-n", type=int, default=100)
    p.add_argument("--follow", "-f", action="store_true")
    add_server_option(p)
    p.set_defaults(func=cmd_logs)

    for name, text in (("stop", "stop a service (stays stopped across commits) until `start`"), ("start", "undo `stop`")):
        p = subparsers.add_parser(name, help=text)
        add_common_options(p, source=False)
        p.add_argument("service")
        add_server_option(p)
        p.set_defaults(func=cmd_stop if name == "stop" else cmd_start)


def add_server_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--server",
        metavar="URL",
        help="a remote tidegate's gateway (default $TIDEGATE_SERVER); its admin token from $TIDEGATE_TOKEN",
    )


def _remote(args: argparse.Namespace) -> ControlClient | None:
    server = server_from(getattr(args, "server", None), os.environ)
    return ControlClient(server, os.environ.get(TOKEN_ENV)) if server else None


def _settings(args: argparse.Namespace) -> Settings:
    settings = build_settings(args)
    warning = state_inside_repo(settings)
    if warning:
        say(f"warning: {warning}", stream=sys.stderr, style="yellow")
    return settings


# --- masking replica output in another process ------------------------------------------------
# `ps` and `logs` show what a replica printed, masked with the values of the secrets it received.
# The state holds only their salted hashes, so these commands re-derive the values from their own
# environment and env file (a candidate counts only when its hash matches). By default the env
# file is the one `up`/`apply` was started with: they record its *path* (never its contents) in
# ENV_FILE_RECORD, so `tidegate ps` in a second terminal masks without repeating --env-file.

ENV_FILE_RECORD = "env-file.json"


def _add_mask_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--env-file",
        metavar="FILE",
        help="values for bare KEY env entries, to mask them in replica output (default: the file `up` was given)",
    )


def record_env_file(state_dir: Path, env_file: Path | None) -> None:
    """Remember the path of the env file `up`/`apply` runs with (for `ps`/`logs` masking)."""
    path = state_dir / ENV_FILE_RECORD
    try:
        if env_file is None:
            path.unlink(missing_ok=True)
        else:
            write_json_atomic(path, {"schema_version": 1, "path": str(Path(env_file).absolute())}, mode=0o600)
    except OSError as e:  # only a convenience for `ps`/`logs`: never stop `up` over it
        log.warning("cannot record the env file path in %s: %s", path, e)


def _mask_settings(args: argparse.Namespace) -> Settings:
    """Settings for `ps`/`logs`: with no --env-file, the env file `up` recorded (when readable)."""
    if getattr(args, "env_file", None) is None:
        state = build_settings(args).state_dir
        try:
            recorded = json.loads((state / ENV_FILE_RECORD).read_text()).get("path")
        except (OSError, ValueError, AttributeError):
            recorded = None
        if isinstance(recorded, str) and Path(recorded).is_file() and os.access(recorded, os.R_OK):
            args = argparse.Namespace(**{**vars(args), "env_file": recorded})
    return build_settings(args)


def _fail(message: str) -> int:
    say(f"error: {message}", stream=sys.stderr, style="red")
    return EXIT_ERROR


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
        settings = _settings(args)
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
        return _fail(str(e))
    print(render_report(report))
    if engine.state_fault is not None:  # nothing was applied: say why, and fail
        say(f"error: {engine.state_fault}", stream=sys.stderr, style="red")
        return EXIT_ERROR
    return EXIT_ERROR if report.errors else EXIT_OK


# --- up --------------------------------------------------------------------------------------

DEMAND_WAKE = "demand"  # the in-process gateway holds a request for a service at zero


def cmd_up(args: argparse.Namespace) -> int:
    from reconciler.cli import runtime
    from reconciler.engine.loop import Loop

    _logging(fmt=getattr(args, "log_format", "text"))
    try:
        settings = _settings(args)
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
        return _fail(str(e))
    except (SettingsError, SourceError, ReconcilerError, runtime.RuntimeError_) as e:
        return _fail(str(e))

    gateway: runtime.GatewayThread | None = None
    loop: Loop | None = None
    control_stop = threading.Event()
    verified = runtime.VerifiedInbox()
    try:
        if not args.no_gateway:
            control = runtime.build_control(settings, engine, control_stop)
            gateway = runtime.GatewayThread(settings, verified, control)
            if not gateway.start():
                return _fail(f"gateway: {gateway.error}")
            publish_gateway_address(settings)
        announced: list[frozenset[str]] = []

        def on_report(report: PassReport) -> None:
            routes = read_snapshot(settings.state_dir)
            if gateway is not None and report.wrote_routes:
                # A request held for a cold start goes the moment its replica is ready, not when
                # the gateway's file watcher notices routes.json.
                gateway.publish(routes)
            # Tell the newcomer what to do once something answers, and again when more does.
            ready = frozenset(n for n, r in routes.services.items() if r.upstreams)
            if (not announced and (ready or report.next_run_in is None)) or (announced and ready - announced[-1]):
                announced.append(ready)
                print_next_steps(settings, gateway is not None)

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


# --- ps --------------------------------------------------------------------------------------


def _load_doc(state_dir: Path) -> StateDoc:
    return StateStore(state_dir).load()


def service_rows(views: list[ServiceView], settings: Settings) -> list[dict[str, Any]]:
    """`ps` rows (also its --json): status views plus the URL the gateway serves each at."""
    rows = []
    for v in views:
        reason = v.reason
        for r in v.replicas:
            if r.last_error and not reason:
                reason = f"{r.id}: {r.last_error}"
        if v.diagnostics:  # the first error of its file, so `ps` alone says what to fix
            more = f" (+{len(v.diagnostics) - 1} more: `tidegate ps --json`)" if len(v.diagnostics) > 1 else ""
            reason = f"{reason}: {v.diagnostics[0]}{more}" if reason else v.diagnostics[0] + more
        rows.append(
            {
                "name": v.name,
                "revision": v.revision,
                "ready": v.ready,
                "desired": 0 if v.stopped else v.desired,
                "url": f"http://{v.host}:{settings.listen_port}" if v.host else None,
                "status": v.status,
                "reason": reason,
                "scaling": v.last_scaling,
                "scaling_history": list(v.scaling_history),
                "scaling_pending": v.scaling_pending,
                "diagnostics": list(v.diagnostics),
                "cost_per_hour": round(v.cost_per_hour, 4),
                "replicas": [
                    {
                        "id": r.id,
                        "ordinal": r.ordinal,
                        "phase": r.phase,
                        "current": r.current,
                        "address": r.address,
                        "attempts": r.attempts,
                        "error": r.last_error,
                        "probe_failures": r.probe_failures,
                        "probe_passes": r.probe_passes,
                        "log_tail": list(r.log_tail),
                        "offer": r.offer,
                        "price": r.price,
                        "machine": r.machine,
                    }
                    for r in v.replicas
                ],
            }
        )
    return rows


def remote_ps(client: ControlClient) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any], list[str]]:
    """(source, ps rows, preview decision, config problems) from a remote control API's overview."""
    ov = client.call("GET", "/overview")
    rows = [
        {
            "name": s["name"],
            "revision": s["revision"],
            "ready": s["ready"],
            "desired": s["desired"],
            "url": s["url"],
            "status": s["status"],
            "reason": s["reason"],
            "scaling": None,
            "cost_per_hour": s["cost_per_hour"],
            "replicas": [],
        }
        for s in ov["services"]
    ]
    src = {"source": ov["source"], "revision": ov["revision"], "error": ov["source_error"]}
    previews = ov["previews"]
    decision = {
        "previews": [{**p, "model": None} for p in previews["previews"]],
        "rejected": previews["rejected"],
    }
    config = [f"{v['path']}:{v['line']}:{v['column']}: {v['message']}" for v in ov.get("validation", [])]
    return src, rows, decision, config


def cmd_ps(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as stack:
        return _ps(args, stack)


def _ps(args: argparse.Namespace, stack: contextlib.ExitStack) -> int:
    from reconciler.cli import runtime
    config: list[str] = []
    client = _remote(args)
    if client is not None:
        with client:
            try:
                if args.json:
                    print(json.dumps(client.call("GET", "/overview"), indent=2))
                    return EXIT_OK
                src, rows, decision, config = remote_ps(client)
            except ControlClientError as e:
                return _fail(str(e))
        problems: list[str] = []
        code = EXIT_OK
    else:
        from reconciler.cli.state_health import serving_problems, state_problems
        from reconciler.state.view import status_views

        try:
            settings = _mask_settings(args)
            running = None if args.listen else running_gateway_listen(settings.state_dir)
            if running:  # URLs where the running gateway really listens, not the default port
                settings = replace(settings, listen=running)
        except SettingsError as e:
            return _fail(str(e))
        if settings.etcd is not None:  # shared state: read from etcd into a private folder
            from reconciler.cli.ha import read_shared

            shared_copy = tempfile.TemporaryDirectory(prefix="tidegate-ps-")
            stack.callback(shared_copy.cleanup)
            try:
                settings = read_shared(settings, Path(shared_copy.name))
            except (EtcdError, ReconcilerError) as e:
                return _fail(str(e))
        if not settings.state_dir.is_dir():
            return _fail(f"no state at {settings.state_dir} (check --state or $TIDEGATE_STATE; `tidegate up` creates it)")
        problems = state_problems(settings.state_dir)
        if problems:
            holder = StateStore(settings.state_dir).holder()
            if holder is not None:
                problems.append(f"the running tidegate ({holder}) takes no action that changes what runs until this is fixed")
        problems += serving_problems(settings.state_dir)
        try:
            engine = runtime.build_engine(settings, read_only=True)
            views = engine.status()
            if engine.doc.last_snapshot is not None:
                config = list(engine.doc.last_snapshot.diagnostics)
        except StateUnreadableError:
            try:
                backup = StateStore(settings.state_dir).read_backup()
            except ReconcilerError:
                backup = None
            views = status_views(backup) if backup is not None else []
            if backup is not None:
                problems.append(f"showing the backup (serial {backup.serial})")
        except (SettingsError, ReconcilerError) as e:
            return _fail(str(e))
        code = EXIT_ERROR if problems else EXIT_OK
        rows = service_rows(views, settings)
        src = read_source(settings.state_dir)
        decision = read_decision(settings.state_dir)
    previews = ps_rows(decision, time.time())
    total = round(sum(r["cost_per_hour"] for r in rows), 4)
    if args.json:
        body = {
            "source": src,
            "services": rows,
            "previews": decision,
            "cost_per_hour": total,
            "problems": problems,
            "config_diagnostics": config,
        }
        print(json.dumps(body, indent=2))
        return code
    for problem in problems:
        say(f"error: {problem}", style="red")
    if src:
        head = f"source {src.get('source')} at {str(src.get('revision') or '-')[:12]}"
        if src.get("error"):
            head += f"  (last fetch failed: {src['error']})"
        say(head)
    for line in config:
        say(f"config: {line}")
    if not rows:
        say("no services deployed yet")
        return code
    print_table(
        ["SERVICE", "REVISION", "READY", "URL", "STATUS", "REASON", "SCALING", "COST"],
        [
            [
                r["name"],
                (r["revision"] or "-")[:12],
                f"{r['ready']}/{r['desired']}",
                r["url"] or "-",
                r["status"],
                r["reason"] or "",
                r["scaling"] or "",
                f"${r['cost_per_hour']:.2f}/h" if r["cost_per_hour"] else "-",
            ]
            for r in rows
        ],
    )
    if total:
        say(f"running cost: ${total:.2f}/h")
    if previews:
        say("")
        print_table(PS_HEADERS, previews)
    machines: dict[str, list[str]] = {}
    for r in rows:
        for rep in r["replicas"]:
            if rep.get("machine"):
                machines.setdefault(rep["machine"], []).append(rep["id"])
    for machine, ids in machines.items():  # local replicas answer only on the machine that runs them
        say(f"on machine {machine} (local backend): {', '.join(ids)}")
    for r in rows:
        for rep in r["replicas"]:
            if rep["log_tail"]:
                say(f"last lines of {rep['id']}:")
                for line in rep["log_tail"]:
                    say(f"  | {line}")
    return code


# --- logs ------------------------------------------------------------------------------------


def remote_logs(client: ControlClient, args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"lines": args.lines}
    if args.replica is not None:
        params["replica"] = str(args.replica)
    try:
        if not args.follow:
            for line in client.call("GET", f"/services/{args.service}/logs", params=params)["lines"]:
                print(line)
            return EXIT_OK
        for event, data in client.stream_lines(f"/services/{args.service}/logs/stream", params):
            if event == "end":
                return _fail(data)
            print(data, flush=True)
    except ControlClientError as e:
        return _fail(str(e))
    return EXIT_OK


def cmd_logs(args: argparse.Namespace) -> int:
    from reconciler.cli import runtime
    client = _remote(args)
    if client is not None:
        with client:
            return remote_logs(client, args)
    try:
        settings = _mask_settings(args)
        doc = _load_doc(settings.state_dir)
        rec = doc.services.get(args.service)
        if rec is None or not rec.replicas:
            known = ", ".join(sorted(doc.services)) or "none"
            return _fail(f"no replicas for service {args.service!r} (services: {known})")
        replicas = sorted(rec.replicas, key=lambda r: (r.ordinal, -(r.created_at or 0)))
        if args.replica is not None:
            replicas = [r for r in replicas if r.ordinal == args.replica]
            if not replicas:
                return _fail(f"{args.service} has no replica {args.replica}")
        replica = replicas[0]
        installation = StateStore(settings.state_dir).installation(create=False)
        registry = runtime.build_registry(settings, installation.id)
        backend = registry.get(replica.backend)
        # The replica's output is shown with the values of the secrets it received masked; they
        # are re-derived from this process's environment / --env-file (reconciler.state.redact).
        book = SecretBook(installation.salt, settings.env)
        masker = book.masker(replica.secrets)
        if masker is None:
            return _fail(withheld(book.unknown(replica.secrets)))
    except (SettingsError, ReconcilerError, runtime.RuntimeError_) as e:
        return _fail(str(e))
    except Exception as e:  # backend construction (cloud settings) failing is a user-facing error
        return _fail(str(e))
    seen = backend.logs(replica.id, lines=args.lines)
    for line in seen:
        print(masker(line))
    sys.stdout.flush()
    if args.follow and backend.log_path(replica.id) is not None:  # a local log file: follow it by byte offset
        from reconciler.cli.follow import follow_lines

        def followed() -> tuple[str, Path | None]:
            rid = _current_replica(settings.state_dir, args.service, replica.ordinal) or replica.id
            return rid, backend.log_path(rid)

        def emit(line: str) -> None:
            print(masker(line), flush=True)

        follow_lines(followed, emit, lambda: False, time.sleep)
        return EXIT_OK
    while args.follow:
        time.sleep(0.5)
        current = backend.logs(replica.id, lines=max(args.lines, 200))
        for line in new_lines(seen, current):
            print(masker(line))
        sys.stdout.flush()
        seen = current
    return EXIT_OK


def _current_replica(state_dir: Path, service: str, ordinal: int) -> str | None:
    """The newest replica of `service` at `ordinal` in the state (it changes when replaced)."""
    try:
        rec = _load_doc(state_dir).services.get(service)
    except ReconcilerError:
        return None
    mine = [r for r in (rec.replicas if rec else []) if r.ordinal == ordinal and r.phase != "draining"]
    return max(mine, key=lambda r: r.created_at or 0).id if mine else None


# --- stop / start ----------------------------------------------------------------------------


def cmd_stop(args: argparse.Namespace) -> int:
    return _stop_start(args, "stop")


def cmd_start(args: argparse.Namespace) -> int:
    return _stop_start(args, "start")


def _stop_now(engine: Any, name: str, timeout: float = 60.0) -> str:
    """No `up` runs: reconcile here until the service's replicas are gone, and say only what is
    true (a replica that still runs is not "stopped")."""
    deadline = time.monotonic() + timeout
    report = engine.reconcile(None)
    while engine.doc.services[name].replicas and report.next_run_in is not None and time.monotonic() < deadline:
        time.sleep(min(report.next_run_in, 1.0))
        report = engine.reconcile(None)
    left = [r.id for r in engine.doc.services[name].replicas]
    if not left:
        return "stopped (no replica runs); it stays stopped across commits until `tidegate start`"
    return (
        f"stop recorded, but {len(left)} replica(s) still run ({', '.join(left)}); they stop when "
        "`tidegate up` or `tidegate apply` next runs"
    )


def _stop_start(args: argparse.Namespace, kind: str) -> int:
    from reconciler.cli import runtime
    client = _remote(args)
    if client is not None:
        with client:
            try:
                say(client.call("POST", f"/services/{args.service}/{kind}")["detail"])
            except ControlClientError as e:
                return _fail(str(e))
        return EXIT_OK
    try:
        settings = _settings(args)
        if settings.etcd is not None:  # shared state: the leader acts on it (reconciler.cli.ha)
            from reconciler.cli.ha import read_shared, send_shared_signal

            with tempfile.TemporaryDirectory(prefix="tidegate-") as tmp:
                doc = _load_doc(read_shared(settings, Path(tmp)).state_dir)
            if args.service not in doc.services:
                return _fail(f"unknown service {args.service!r} (services: {', '.join(sorted(doc.services)) or 'none'})")
            leader = send_shared_signal(settings, kind, {"service": args.service})
            say(f"asked the leading tidegate ({leader}) to {kind} {args.service}; `tidegate ps` shows the result")
            return EXIT_OK
        doc = _load_doc(settings.state_dir)
    except (SettingsError, ReconcilerError, EtcdError) as e:
        return _fail(str(e))
    if args.service not in doc.services:
        known = ", ".join(sorted(doc.services)) or "none"
        return _fail(f"unknown service {args.service!r} (services: {known})")
    holder = StateStore(settings.state_dir).holder()
    if holder is None:
        try:
            engine = runtime.build_engine(settings)
            engine.recover()
            try:
                (engine.stop_service if kind == "stop" else engine.start_service)(args.service)
                message = _stop_now(engine, args.service) if kind == "stop" else (
                    "started (replicas come up on the next `up`/`apply`)"
                )
            finally:
                engine.close()
            say(f"{args.service}: {message}")
            return EXIT_OK
        except StateLockedError as e:
            holder = e.holder or "another process"  # someone started `up` meanwhile: ask it
        except (ReconcilerError, runtime.RuntimeError_) as e:
            return _fail(str(e))
    send_signal(settings.state_dir, kind, {"service": args.service})
    say(f"asked the running tidegate ({holder}) to {kind} {args.service}; `tidegate ps` shows the result")
    return EXIT_OK
