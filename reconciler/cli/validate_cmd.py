"""`tidegate validate [PATH ...]` and `tidegate schema`: the loader's verdict for people and CI.

Exit codes: 0 valid (warnings allowed), 1 any error, 2 usage (a path that does not exist).
Formats: `text` quotes the offending line with a caret under the column, `json` is for tools, and
`github` prints workflow commands so errors land on the exact line of a pull request's diff.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, TextIO

from reconciler.config.loader import Diagnostic, LoadResult, Severity, load_tree
from reconciler.config.schema import service_json_schema


class OutputFormat(StrEnum):
    TEXT = "text"
    JSON = "json"
    GITHUB = "github"


def register(subparsers: Any) -> None:
    validate = subparsers.add_parser(
        "validate",
        help="check service configs (.dstack.yml) and report every problem with its line",
        description="Validate every .dstack.yml / *.dstack.yml under each PATH (a directory or one file).",
    )
    validate.add_argument("paths", nargs="*", default=["."], metavar="PATH")
    validate.add_argument(
        "--format", choices=[f.value for f in OutputFormat], default=OutputFormat.TEXT.value
    )
    validate.set_defaults(func=run_validate)
    schema = subparsers.add_parser("schema", help="print the JSON Schema of the service file (for editors)")
    schema.set_defaults(func=run_schema)


def run_schema(args: argparse.Namespace) -> int:
    json.dump(service_json_schema(), sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")
    return 0


def run_validate(args: argparse.Namespace) -> int:
    return validate_paths(args.paths, OutputFormat(args.format), sys.stdout, sys.stderr)


def _split(target: Path) -> tuple[Path, str | None]:
    """Root and subpath for the loader: a file is loaded from its directory."""
    if target.is_file():
        return target.parent, target.name
    return target, None


def validate_paths(paths: Sequence[str], fmt: OutputFormat, out: TextIO, err: TextIO) -> int:
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        for p in missing:
            err.write(f"tidegate validate: {p}: no such file or directory\n")
        return 2
    results: list[tuple[Path, LoadResult]] = []
    for p in paths:
        root, sub = _split(Path(p))
        results.append((root, load_tree(root, sub)))
    shown = [
        (_display(root, d), d) for root, result in results for d in (*result.diagnostics, *result.skipped)
    ]
    services = sorted(name for _root, result in results for name in result.services)
    failed = sorted(name for _root, result in results for name in result.failed)
    errors = sum(1 for _p, d in shown if d.severity == Severity.ERROR)
    warnings = sum(1 for _p, d in shown if d.severity == Severity.WARNING)
    if fmt == OutputFormat.JSON:
        payload = {
            "ok": errors == 0,
            "services": services,
            "failed": failed,
            "diagnostics": [{**_as_dict(d), "path": p} for p, d in shown],
        }
        out.write(json.dumps(payload, indent=2) + "\n")
    elif fmt == OutputFormat.GITHUB:
        for path, d in shown:
            if d.severity != Severity.INFO:
                out.write(github_annotation(path, d) + "\n")
        out.write(_summary(services, errors, warnings) + "\n")
    else:
        for path, d in shown:
            out.write(text_report(path, d) + "\n")
        out.write(_summary(services, errors, warnings) + "\n")
    return 1 if errors else 0


def _display(root: Path, d: Diagnostic) -> str:
    """The file as the user should see it: relative to the current directory when possible."""
    full = root / d.path
    try:
        return Path(os.path.relpath(full)).as_posix()
    except ValueError:  # another drive on Windows
        return full.as_posix()


def _as_dict(d: Diagnostic) -> dict[str, Any]:
    return {
        "path": d.path,
        "line": d.line,
        "column": d.column,
        "field": d.field,
        "message": d.message,
        "severity": str(d.severity),
    }


def _summary(services: list[str], errors: int, warnings: int) -> str:
    noun = "service" if len(services) == 1 else "services"
    return f"{len(services)} valid {noun}, {errors} error(s), {warnings} warning(s)"


def text_report(path: str, d: Diagnostic) -> str:
    """`path:line:col: severity: field: message`, then the offending line and a caret."""
    field = f"{d.field}: " if d.field else ""
    head = f"{path}:{d.line}:{d.column}: {d.severity}: {field}{d.message}"
    source = _source_line(path, d.line)
    if source is None:
        return head
    caret = " " * (max(d.column, 1) - 1) + "^"
    return f"{head}\n  {d.line:>4} | {source}\n       | {caret}"


def _source_line(path: str, line: int) -> str | None:
    if os.path.islink(path):
        return None  # never show what a link points at (it may lead outside the repository)
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, text in enumerate(f, start=1):
                if number == line:
                    return text.rstrip("\r\n").replace("\t", " ")
    except OSError:
        return None
    return None


def _escape_data(value: str) -> str:
    return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(value: str) -> str:
    return _escape_data(value).replace(":", "%3A").replace(",", "%2C")


def github_annotation(path: str, d: Diagnostic) -> str:
    """`::error file=…,line=…,col=…,title=…::message` (GitHub Actions workflow command)."""
    command = "error" if d.severity == Severity.ERROR else "warning"
    title = f"tidegate: {d.field}" if d.field else "tidegate"
    props = f"file={_escape_property(path)},line={d.line},col={d.column},title={_escape_property(title)}"
    return f"::{command} {props}::{_escape_data(d.message)}"

