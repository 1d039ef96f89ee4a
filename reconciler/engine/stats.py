"""Reads the gateway's request statistics: `<state>/gateway/stats-*.json`, one file per worker.

Why a reader of its own: the gateway may run several workers (processes), each publishing its own
counters; the autoscaler needs their sum, and must ignore files left behind by dead workers, so a
file older than `max_age` seconds (by its `at` field) does not count. Unreadable files are skipped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reconciler.engine.autoscale import ServiceStats
from tidegate.stats_file import STATS_DIR


def _num(d: dict[str, Any], key: str) -> float:
    v = d.get(key, 0)
    return float(v) if isinstance(v, int | float) else 0.0


def _parse(entry: dict[str, Any]) -> ServiceStats:
    per_raw = entry.get("per_upstream_in_flight") or {}
    per = (
        {str(k): int(v) for k, v in per_raw.items() if isinstance(v, int | float)}
        if isinstance(per_raw, dict)
        else {}
    )
    seen_raw = entry.get("per_upstream_answered_at") or {}
    seen = (
        {str(k): float(v) for k, v in seen_raw.items() if isinstance(v, int | float)}
        if isinstance(seen_raw, dict)
        else {}
    )
    return ServiceStats(
        rps_6=_num(entry, "rps_6"),
        rps_30=_num(entry, "rps_30"),
        rps_60=_num(entry, "rps_60"),
        rps_300=_num(entry, "rps_300"),
        in_flight=int(_num(entry, "in_flight")),
        held=int(_num(entry, "held")),
        per_upstream_in_flight=per,
        per_upstream_answered_at=seen,
    )


def read_stats(state_dir: Path, now: float, max_age: float = 10.0) -> dict[str, ServiceStats]:
    """Per-service stats summed over every fresh stats file."""
    out: dict[str, ServiceStats] = {}
    folder = Path(state_dir) / STATS_DIR
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("stats-*.json")):
        try:
            doc = json.loads(path.read_bytes())
        except (OSError, ValueError):
            continue
        if not isinstance(doc, dict):
            continue
        at = doc.get("at")
        if not isinstance(at, int | float) or now - float(at) > max_age:
            continue
        services = doc.get("services")
        if not isinstance(services, dict):
            continue
        for name, entry in services.items():
            if isinstance(entry, dict):
                st = _parse(entry)
                out[str(name)] = out[str(name)] + st if str(name) in out else st
    return out
