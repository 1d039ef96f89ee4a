"""Signals from the gateway (and the CLI) to the reconciler, through files in `<state>/signals/`.

The gateway may run in other processes (uvicorn workers, `tidegate gateway`), so it never calls
the reconciler: it drops small JSON files here. The reconciler watches the folder, wakes on any
new file, reads and deletes it. Kinds:

- `wake`   — reconcile now (push webhook, `POST /hooks/git`); payload may name a ref.
- `demand` — a request is held for a service at zero replicas; payload names the service.

A signal only wakes the loop (or asks for what any operator at this machine may ask: stop, start,
demand); it never carries trust. Facts about pull requests come from verified webhooks in-process
or from the GitHub API (reconciler/previews/loop.py). The folder is 0700.

Per-service request statistics are published separately as `<state>/gateway/stats-<pid>.json`
(one file per gateway worker, summed by the reader) so the autoscaler sees all workers.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

SIGNALS_DIR = "signals"


def signals_folder(state_dir: Path) -> Path:
    """`<state>/signals`, created 0700 (and tightened to it if it exists more open)."""
    folder = state_dir / SIGNALS_DIR
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if folder.stat().st_mode & 0o077:
        os.chmod(folder, 0o700)
    return folder


def send_signal(state_dir: Path, kind: str, payload: dict[str, Any] | None = None) -> Path:
    folder = signals_folder(state_dir)
    body = json.dumps({"kind": kind, "at": time.time(), **(payload or {})}).encode()
    name = f"{time.time_ns()}-{kind}-{uuid.uuid4().hex[:8]}.json"
    tmp = folder / f".{name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # state files are 0600
    with os.fdopen(fd, "wb") as f:
        f.write(body)
    os.replace(tmp, folder / name)
    return folder / name


def drain_signals(state_dir: Path) -> list[dict[str, Any]]:
    """Read and delete every pending signal, oldest first. Unreadable files are dropped."""
    folder = state_dir / SIGNALS_DIR
    if not folder.is_dir():
        return []
    out: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.json")):
        with contextlib.suppress(OSError, ValueError):
            out.append(json.loads(path.read_bytes()))
        path.unlink(missing_ok=True)
    return out
