"""The commands that act on the state from any terminal: `ps`, `logs`, `stop`, `start` (`apply`
and `up` are in up_cmd.py, `plan` in plan_cmd.py).

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
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from reconciler.cli.common import EXIT_ERROR, EXIT_OK, add_mask_option, command_settings, fail, mask_settings
from reconciler.cli.output import print_table, say
from reconciler.cli.ps_view import remote_ps, service_rows
from reconciler.cli.settings import SettingsError, add_common_options, running_gateway_listen
from reconciler.control.tail import new_lines
from reconciler.previews.pr_source import read_decision
from reconciler.previews.wiring import PS_HEADERS, ps_rows
from reconciler.source.checkout import read_source
from reconciler.state.errors import ReconcilerError, StateLockedError, StateUnreadableError
from reconciler.state.records import StateDoc
from reconciler.state.redact import SecretBook, withheld
from reconciler.state.store import StateStore
from tidegate.control_client import TOKEN_ENV, ControlClient, ControlClientError, server_from
from tidegate.etcd import EtcdError
from tidegate.signals import send_signal


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("ps", help="services, revision, replicas, URL, status")
    add_common_options(p, source=False, gateway=True)
    add_mask_option(p)
    p.add_argument("--json", action="store_true")
    add_server_option(p)
    p.set_defaults(func=cmd_ps)

    p = subparsers.add_parser("logs", help="the last lines a service's replica wrote")
    add_common_options(p, source=False)
    add_mask_option(p)
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


# --- ps --------------------------------------------------------------------------------------


def _load_doc(state_dir: Path) -> StateDoc:
    return StateStore(state_dir).load()


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
                return fail(str(e))
        problems: list[str] = []
        code = EXIT_OK
    else:
        from reconciler.cli.state_health import serving_problems, state_problems
        from reconciler.state.view import status_views

        try:
            settings = mask_settings(args)
            running = None if args.listen else running_gateway_listen(settings.state_dir)
            if running:  # URLs where the running gateway really listens, not the default port
                settings = replace(settings, listen=running)
        except SettingsError as e:
            return fail(str(e))
        if settings.etcd is not None:  # shared state: read from etcd into a private folder
            from reconciler.cli.ha import read_shared

            shared_copy = tempfile.TemporaryDirectory(prefix="tidegate-ps-")
            stack.callback(shared_copy.cleanup)
            try:
                settings = read_shared(settings, Path(shared_copy.name))
            except (EtcdError, ReconcilerError) as e:
                return fail(str(e))
        if not settings.state_dir.is_dir():
            return fail(f"no state at {settings.state_dir} (check --state or $TIDEGATE_STATE; `tidegate up` creates it)")
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
            return fail(str(e))
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
                return fail(data)
            print(data, flush=True)
    except ControlClientError as e:
        return fail(str(e))
    return EXIT_OK


def cmd_logs(args: argparse.Namespace) -> int:
    from reconciler.cli import runtime
    client = _remote(args)
    if client is not None:
        with client:
            return remote_logs(client, args)
    try:
        settings = mask_settings(args)
        doc = _load_doc(settings.state_dir)
        rec = doc.services.get(args.service)
        if rec is None or not rec.replicas:
            known = ", ".join(sorted(doc.services)) or "none"
            return fail(f"no replicas for service {args.service!r} (services: {known})")
        replicas = sorted(rec.replicas, key=lambda r: (r.ordinal, -(r.created_at or 0)))
        if args.replica is not None:
            replicas = [r for r in replicas if r.ordinal == args.replica]
            if not replicas:
                return fail(f"{args.service} has no replica {args.replica}")
        replica = replicas[0]
        installation = StateStore(settings.state_dir).installation(create=False)
        registry = runtime.build_registry(settings, installation.id)
        backend = registry.get(replica.backend)
        # The replica's output is shown with the values of the secrets it received masked; they
        # are re-derived from this process's environment / --env-file (reconciler.state.redact).
        book = SecretBook(installation.salt, settings.env)
        masker = book.masker(replica.secrets)
        if masker is None:
            return fail(withheld(book.unknown(replica.secrets)))
    except (SettingsError, ReconcilerError, runtime.RuntimeError_) as e:
        return fail(str(e))
    except Exception as e:  # backend construction (cloud settings) failing is a user-facing error
        return fail(str(e))
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
                return fail(str(e))
        return EXIT_OK
    try:
        settings = command_settings(args)
        if settings.etcd is not None:  # shared state: the leader acts on it (reconciler.cli.ha)
            from reconciler.cli.ha import read_shared, send_shared_signal

            with tempfile.TemporaryDirectory(prefix="tidegate-") as tmp:
                doc = _load_doc(read_shared(settings, Path(tmp)).state_dir)
            if args.service not in doc.services:
                return fail(f"unknown service {args.service!r} (services: {', '.join(sorted(doc.services)) or 'none'})")
            leader = send_shared_signal(settings, kind, {"service": args.service})
            say(f"asked the leading tidegate ({leader}) to {kind} {args.service}; `tidegate ps` shows the result")
            return EXIT_OK
        doc = _load_doc(settings.state_dir)
    except (SettingsError, ReconcilerError, EtcdError) as e:
        return fail(str(e))
    if args.service not in doc.services:
        known = ", ".join(sorted(doc.services)) or "none"
        return fail(f"unknown service {args.service!r} (services: {known})")
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
            return fail(str(e))
    send_signal(settings.state_dir, kind, {"service": args.service})
    say(f"asked the running tidegate ({holder}) to {kind} {args.service}; `tidegate ps` shows the result")
    return EXIT_OK
