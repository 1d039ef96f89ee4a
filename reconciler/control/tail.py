"""`tail -f` over a window of a replica's last lines: which lines of a new window are new. Pure."""

from __future__ import annotations

from collections.abc import Sequence


def new_lines(previous: Sequence[str], current: Sequence[str]) -> list[str]:
    """Lines of `current` after the longest overlap with the end of `previous` (tail -f over a
    window of the last lines)."""
    for size in range(min(len(previous), len(current)), 0, -1):
        if list(previous[-size:]) == list(current[:size]):
            return list(current[size:])
    return list(current) if list(previous) != list(current) else []
