"""Terminal output for the runtime commands: rich tables and colour on a TTY, plain text otherwise.

Scripts and tests read `tidegate ps` through a pipe, so when stdout is not a terminal the output
is plain aligned columns (no box drawing, no ANSI codes) that `awk`/`grep` handle; `--json` is the
stable machine format. Everything printed here has already had secret values removed upstream.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

# Words in a status column that get a colour on a TTY.
_STYLES = {
    "running": "green",
    "ready": "green",
    "provisioning": "yellow",
    "pending": "yellow",
    "rolling": "cyan",
    "updating": "cyan",
    "stopped": "dim",
    "failed": "red",
    "error": "red",
    "stalled": "red",
    "blocked": "red",
}


def is_tty(stream: TextIO | None = None) -> bool:
    s = stream or sys.stdout
    return bool(getattr(s, "isatty", lambda: False)())


def plain_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to the widest cell, two spaces apart; the last column is not padded."""
    widths = [len(c) for c in columns]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in [list(columns), *[list(r) for r in rows]]:
        cells = [cell.ljust(widths[i]) if i < len(row) - 1 else cell for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def print_table(
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    title: str | None = None,
    status_column: str | None = "STATUS",
    stream: TextIO | None = None,
) -> None:
    out = stream or sys.stdout
    if not is_tty(out):
        if title:
            out.write(title + "\n")
        out.write(plain_table(columns, rows) + "\n")
        return
    console = Console(file=out)
    table = Table(title=title, title_justify="left", header_style="bold")
    for c in columns:
        table.add_column(c, overflow="fold")
    status_idx = list(columns).index(status_column) if status_column and status_column in columns else None
    for row in rows:
        cells = [Text(cell) for cell in row]  # Text, not markup: cell values may contain "[...]"
        if status_idx is not None:
            style = _STYLES.get(row[status_idx].split(" ", 1)[0].lower())
            if style:
                cells[status_idx].stylize(style)
        table.add_row(*cells)
    console.print(table)


def say(message: str, *, stream: TextIO | None = None, style: str | None = None) -> None:
    """One line to the user; styled only on a TTY. Markup in `message` is never interpreted."""
    out = stream or sys.stdout
    if style and is_tty(out):
        Console(file=out).print(message, style=style, markup=False, highlight=False)
    else:
        out.write(message + "\n")
        out.flush()
