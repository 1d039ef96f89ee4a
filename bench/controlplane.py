"""Control-plane benchmark (not a test): N services on a backend that is slow like a cloud, time
until every one is ready and routed, serial vs concurrent, measured in one run. Prints a table.

The backend is the fake from tests/reconciler/fakes.py (it passes the backend contract) with
`--create` seconds to start a replica and `--ready` seconds more until it answers its probe. Two
ways a backend can spend the create time:

- blocking: `create` holds the worker for the whole boot (an SDK chained on `.result()`, what the
  Azure backend does today);
- started + polled: `create` returns at once with PROVISIONING and `describe`/`list_owned` show it
  run later (the protocol's promise, backends/base.py).

Each row runs the real Engine driven by the real loop (reconciler.engine.loop, as `tidegate up`
wires it: passes never wait for workers, a worker that settles wakes a pass) over a fresh state
dir, from the first pass until routes.json lists a ready upstream for every service. The first
row (one service) is the reference: the target is 20 services within 1.5x of it.

Usage: .venv/bin/python bench/controlplane.py [--services 20] [--create 3] [--ready 2] [--no-serial]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backends.base import BackendRegistry  # noqa: E402
from reconciler.cli.settings import DEFAULT_WORKERS  # noqa: E402
from reconciler.engine.loop import Loop  # noqa: E402
from reconciler.engine.reconcile import Engine, EngineSettings, Snapshot  # noqa: E402
from tests.reconciler.fakes import FakeBackend  # noqa: E402
from tidegate.routes_io import read_snapshot  # noqa: E402

SERVICE = """\
type: service
name: {name}
python: "3.11"
commands:
  - python -m http.server 8000
port: 8000
"""


@dataclass(frozen=True)
class Row:
    label: str
    services: int
    workers: int
    blocking: bool


def time_to_ready(row: Row, create: float, ready: float, timeout: float) -> tuple[float, int]:
    """Seconds from the first pass until every service is routed; and the most backend calls
    that were in flight at once."""
    with tempfile.TemporaryDirectory(prefix="tg-bench-cp-") as tmp:
        root = Path(tmp) / "repo"
        root.mkdir()
        names = [f"svc{i:02d}" for i in range(row.services)]
        for name in names:
            (root / f"{name}.dstack.yml").write_text(SERVICE.format(name=name))
        snap = Snapshot(revision="1" * 40, root=root)
        backend = FakeBackend(create_latency=create, ready_latency=ready, blocking=row.blocking)
        state = Path(tmp) / "state"
        settings = EngineSettings(workers=row.workers)
        engine = Engine(state, BackendRegistry({"local": backend}), settings, prober=backend.prober())
        loop = Loop(lambda: engine.reconcile(snap, wait=False).wake_in, interval=30.0, jitter=0.0)
        engine.on_settled = lambda name: loop.wake(f"{name} settled", fetch=False)
        started = time.monotonic()
        loop.start()
        try:
            while time.monotonic() - started < timeout:
                routes = read_snapshot(state).services if (state / "routes.json").exists() else {}
                if all(name in routes and any(not u.draining for u in routes[name].upstreams) for name in names):
                    return time.monotonic() - started, backend.max_in_flight
                time.sleep(0.02)
            raise SystemExit(f"{row.label}: not all ready within {timeout:g}s")
        finally:
            loop.shutdown()
            backend.release()
            engine.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=20)
    parser.add_argument("--create", type=float, default=3.0, help="seconds a create takes (default 3)")
    parser.add_argument("--ready", type=float, default=2.0, help="seconds from running to ready (default 2)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help=f"pool size (default {DEFAULT_WORKERS})")
    parser.add_argument("--no-serial", action="store_true", help="skip the serial baseline (it takes N x create)")
    args = parser.parse_args()
    n = args.services
    rows = [
        Row("1 service (reference)", 1, args.workers, True),
        *([Row(f"{n} services, workers=1 (serial baseline)", n, 1, True)] if not args.no_serial else []),
        Row(f"{n} services, workers={args.workers}, blocking create", n, args.workers, True),
        Row(f"{n} services, workers=4, create started + polled", n, 4, False),
    ]
    budget = 5 * (args.create + args.ready) + n * (args.create + 1)
    print(f"backend: create {args.create:g}s, ready {args.ready:g}s after running; time until all routed")
    print(f"{'scenario':<48} {'seconds':>8} {'x ref':>6} {'in flight':>9}")
    reference = None
    results: dict[str, float] = {}
    for row in rows:
        took, in_flight = time_to_ready(row, args.create, args.ready, budget)
        reference = reference or took
        results[row.label] = took
        print(f"{row.label:<48} {took:>8.2f} {took / reference:>6.2f} {in_flight:>9}", flush=True)
    concurrent = [t for label, t in results.items() if "serial" not in label and "reference" not in label]
    assert reference is not None
    worst = max(concurrent) / reference
    verdict = "met" if worst <= 1.5 else "NOT met"
    print(f"target: {n} services within 1.5x one service's time: {verdict} (worst {worst:.2f}x)")
    return 0 if worst <= 1.5 else 1


if __name__ == "__main__":
    raise SystemExit(main())
