"""Run every `tidegate` subcommand's --help, then `validate` and `schema`, with an installed binary.

The subcommands are read from the parser of the installed package itself, so a command added later
is covered without editing this list.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def subcommand_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths: list[tuple[str, ...]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths.append((*prefix, name))
                paths.extend(subcommand_paths(sub, (*prefix, name)))
    return paths


def run(binary: str, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([binary, *args], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        sys.stderr.write(f"FAILED: tidegate {' '.join(args)} (exit {done.returncode})\n{done.stderr}\n")
        raise SystemExit(1)
    return done


def main() -> int:
    binary, examples = sys.argv[1], sys.argv[2]
    from reconciler.cli.main import build_parser  # the installed package, not the source tree

    run(binary, "--help")
    paths = subcommand_paths(build_parser())
    for path in paths:
        run(binary, *path, "--help")
    run(binary, "validate", examples)
    json.loads(run(binary, "schema").stdout)
    from reconciler.control.app import HERE  # the dashboard's templates and assets are package data

    missing = [a for a in ("templates/overview.html", "templates/_service.html", "static/app.js", "static/style.css") if not (HERE / a).is_file()]
    if missing:
        sys.stderr.write(f"FAILED: the installed package lacks the dashboard's {', '.join(missing)}\n")
        return 1
    print(f"plain install: tidegate --help, {len(paths)} subcommand --help, validate, schema, dashboard assets: ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
