"""The `tidegate` command line: one argparse parser, subcommands contributed by their modules.

Each module that owns a command exposes `register(subparsers)`, adding its parser with
`set_defaults(func=handler)`; a handler takes the parsed namespace and returns the exit code.
Settings are built from the namespace inside the handler (nothing reads the environment at import).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from tidegate.fsio import describe_os_error
from tidegate.install_check import foreign_packages

# Modules contributing subcommands, in help order, with the commands each one registers (or, for
# gateway_tunnels, gives its handler). `tidegate <command> ...` imports only the modules of that
# command: together they import most of the project (~0.1-0.2 s per call that `plan` or `ps`
# need not pay); help, no command and unknown commands import them all.
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "reconciler.cli.validate_cmd": ("validate", "schema"),
    "reconciler.cli.plan_cmd": ("plan",),
    "reconciler.cli.up_cmd": ("apply", "up"),
    "reconciler.cli.commands": ("ps", "logs", "stop", "start"),
    "gateway.cli": ("gateway", "token"),
    "reconciler.cli.gateway_tunnels": ("gateway",),  # gateway's handler with etcd: its own tunnels
    "reconciler.cli.cloud_cmd": ("offers", "gc"),
    "reconciler.cli.state_cmd": ("state",),
}
COMMANDS = frozenset(c for commands in COMMAND_MODULES.values() for c in commands)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with every subcommand, or (`command` given) with only that one."""
    parser = argparse.ArgumentParser(
        prog="tidegate",
        description="GitOps deployer for model-serving services (dstack service configs).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, commands in COMMAND_MODULES.items():
        if command is not None and command not in commands:
            continue
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # not written yet in this checkout
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    problems = foreign_packages()
    if problems:  # before importing any subcommand module, which would import the wrong package
        for line in problems:
            print(f"tidegate: {line}", file=sys.stderr)
        print("tidegate: install tidegate in a virtualenv of its own (README: Installing)", file=sys.stderr)
        return 2
    words = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(words[0] if words and words[0] in COMMANDS else None)
    args = parser.parse_args(words)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        code = int(func(args))
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `tidegate ps --json | head`: the reader left; stop quietly like other Unix tools. Point
        # stdout at /dev/null so the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141  # 128 + SIGPIPE, what a shell reports for a killed writer
    except OSError as e:
        # What the machine did (disk full, read-only, permissions), not a bug: one line, no traceback.
        print(f"error: {describe_os_error(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
