"""`tidegate state restore`: put the previous good state.json back, after saying what that does.

Why: every save keeps the file it replaces as `state.json.backup` (as Terraform keeps
`terraform.tfstate.backup`). When state.json becomes unreadable (truncated by a full disk, edited
by hand), `up` holds every action and its error names this command. Restoring is a user decision
(the backup is one save older), so the command shows both files and asks before it acts.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from reconciler.cli.output import say
from reconciler.cli.settings import SettingsError, build_settings
from reconciler.state.errors import StateError
from reconciler.state.records import StateDoc
from reconciler.state.store import StateStore


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("state", help="repair the state directory (restore state.json from its backup)")
    sub = p.add_subparsers(dest="state_command", metavar="ACTION", required=True)
    r = sub.add_parser("restore", help="put the previous good state (state.json.backup) back as state.json")
    r.add_argument("--state", metavar="DIR", help="state directory (default: $TIDEGATE_STATE or ./state)")
    r.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    r.set_defaults(func=cmd_restore)


def _describe(doc: StateDoc) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(doc.updated_at)) if doc.updated_at else "?"
    names = ", ".join(sorted(doc.services)) or "no services"
    return f"serial {doc.serial}, saved {when}, {names}"


def _fail(message: str) -> int:
    say(f"error: {message}", stream=sys.stderr, style="red")
    return 1


def cmd_restore(args: argparse.Namespace) -> int:
    try:
        settings = build_settings(args)
    except SettingsError as e:
        return _fail(str(e))
    if settings.etcd is not None:
        return _fail("`state restore` works on a state directory; state on etcd has no backup file (use etcd's snapshots)")
    state_dir = settings.state_dir
    if not state_dir.is_dir():
        return _fail(f"no state at {state_dir}")
    store = StateStore(state_dir)
    try:
        backup = store.read_backup()
    except StateError as e:
        return _fail(f"the backup cannot be used either: {e}")
    if backup is None:
        return _fail(f"there is no backup to restore ({store.backup_path} does not exist)")
    try:
        current = f"({_describe(store.load())})" if store.path.exists() else "(missing)"
    except StateError as e:
        reason = str(e).split(". ", 1)[0].replace(str(store.path), "").strip(" :").removeprefix("cannot be read: ")
        current = f"(cannot be read: {reason})"
    say("This puts the previous good state back:")
    say(f"  from {store.backup_path}  ({_describe(backup)})")
    say(f"  over {store.path}  {current}")
    if store.path.exists():
        say(f"The file it replaces is kept as {store.path}.broken.")
    holder = store.holder()
    if holder is not None:
        say(f"A running tidegate ({holder}) uses this state: it resumes on its next pass and saves its newer state over the restored one.")
    else:
        say("The next `tidegate up` starts from it and settles every journal entry newer than it by asking the backends.")
    if not args.yes:
        if not sys.stdin.isatty():
            return _fail("not restored: add --yes to confirm (stdin is not a terminal)")
        answer = input("Restore? [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            say("not restored")
            return 1
    try:
        restored, _ = store.restore()
    except StateError as e:
        return _fail(str(e))
    say(f"restored {store.path} from the backup (serial {restored.serial})")
    return 0
