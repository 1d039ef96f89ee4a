"""Where the gateway publishes its per-process request stats, and how: the file the autoscaler reads.

Each gateway process writes `<state>/gateway/stats-<pid>.json` (temp file + replace, no fsync:
a lost sample is replaced a second later); the reconciler reads every such file (reconciler.engine.stats).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

STATS_DIR = "gateway"


def stats_path(state_dir: Path, pid: int) -> Path:
    return state_dir / STATS_DIR / f"stats-{pid}.json"


def write_stats(state_dir: Path, data: Mapping[str, Any]) -> None:
    path = stats_path(state_dir, int(data["pid"]))
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # state files are 0600
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(data))
    os.replace(tmp, path)
