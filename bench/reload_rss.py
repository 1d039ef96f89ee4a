"""Memory and collector behaviour of a long-running engine over many changing revisions (not a
test): what moving each load's objects to the oldest generation (`reconciler.engine.memo._promote`,
at the end of the collector's pause) does to a daemon, measured against the same run without it.

One process per mode (`--promote` on / off), the real Engine on the in-memory fake backend: N
services, then R revisions in a row, each a new folder with a tenth of the files changed (another
greeting, so their replicas roll), each reconciled until its replicas are ready. Reported per
mode: RSS after the first revision and after the last (and its peak), the collections of each
generation the process ran, the time spent in them (`gc.callbacks`) and the cyclic garbage a
final full collection still finds.

Usage: .venv/bin/python bench/reload_rss.py [--services 1000] [--revisions 50]
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run(services: int, revisions: int, promote: bool) -> dict[str, float]:
    import psutil

    from backends.base import BackendRegistry
    from bench.reconcile import SERVICE, write_tree
    from reconciler.engine import memo
    from reconciler.engine.reconcile import Engine, EngineSettings, Snapshot
    from tests.reconciler.fakes import FakeBackend, FakeProber

    memo.PROMOTE = promote
    spent = {"t": 0.0, "start": 0.0}
    counts = [0, 0, 0]

    def timer(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            spent["start"] = time.perf_counter()
        else:
            spent["t"] += time.perf_counter() - spent["start"]
            counts[info["generation"]] += 1

    proc = psutil.Process()
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        engine = Engine(
            base / "state",
            BackendRegistry({"local": FakeBackend()}),
            EngineSettings(drain_min=0.0, drain_grace=0.0),
            prober=FakeProber(),
        )
        try:
            prev: Path | None = None
            peak = 0
            for rev in range(revisions + 1):
                root = base / f"rev-{rev}"
                if prev is None:
                    write_tree(root, services, "v0")
                else:
                    shutil.copytree(prev, root)
                    for i in range(rev % 10, services, 10):  # a tenth of the files, another tenth each time
                        name = f"svc-{i:04d}"
                        (root / name / ".dstack.yml").write_text(SERVICE.format(name=name, greeting=f"v{rev}"))
                    shutil.rmtree(prev)
                prev = root
                for _ in range(4):  # create / roll, probe ready, drain, settle
                    engine.reconcile(Snapshot(f"r{rev}", root))
                rss = proc.memory_info().rss
                peak = max(peak, rss)
                if rev == 0:
                    out["rss first MB"] = rss / 2**20
                    gc.callbacks.append(timer)
            out["rss last MB"] = proc.memory_info().rss / 2**20
            out["rss peak MB"] = peak / 2**20
        finally:
            engine.close()
            if timer in gc.callbacks:
                gc.callbacks.remove(timer)
    out["gen0 collections"], out["gen1 collections"], out["gen2 collections"] = map(float, counts)
    out["gc time ms"] = spent["t"] * 1000
    out["garbage left (objects)"] = float(gc.collect())
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--revisions", type=int, default=50)
    parser.add_argument("--promote", choices=("on", "off"), help=argparse.SUPPRESS)  # one mode (a child)
    args = parser.parse_args()
    if args.promote:
        print(json.dumps(run(args.services, args.revisions, args.promote == "on")))
        return 0
    results = {}
    for mode in ("off", "on"):  # each in a process of its own
        cmd = [sys.executable, __file__, "--services", str(args.services), "--revisions", str(args.revisions), "--promote", mode]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{args.services} services, {args.revisions} revisions (a tenth of the files changed in each)")
    print(f"{'measure':<26} {'promote off':>12} {'promote on':>12}")
    for key in results["on"]:
        print(f"{key:<26} {results['off'][key]:>12.1f} {results['on'][key]:>12.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
