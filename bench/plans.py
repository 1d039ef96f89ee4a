"""Plan benchmark (not a test): load + validate + plan of N services, before and after the fast
config path, measured in the same run. Prints a table (issue 13's "Plans" targets).

- before: every cache and fast path off: PyYAML's pure-Python SafeLoader and no yaml-rs
  (`yamldoc.FAST_LOADER = None`, `quickyaml.ENABLED = False`), no parse cache
  (`PARSE_CACHE.enabled = False`), no desired-service memos
  (`engine.memo.enabled = False`) and the code hash by the generic tree walk
  (`code_files.FAST = False`): every file parsed, validated and resolved on every load.
- after: all of them on (the defaults).

Rows (each the median of --runs, in-process, the real Engine on the in-memory fake backend):
- config load: `loader.load_tree` alone on the tree, empty parse cache (read + parse + validate +
  spec hashes; issue 13 gives it ~40 ms of the cold 1,000 plan's 100);
- cold: a new Engine plans a tree of N files with an empty parse cache (load + validate + plan);
- one-file change: the same Engine plans a new revision whose tree differs in one file;
- no-op pass: `reconcile` of the revision it already applied (everything ready).

Usage: .venv/bin/python bench/plans.py [--sizes 1000,10000] [--runs 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backends.base import BackendRegistry  # noqa: E402
from bench.reconcile import SERVICE, write_tree  # noqa: E402
from reconciler.config import loader, quickyaml, yamldoc  # noqa: E402
from reconciler.engine import memo  # noqa: E402
from reconciler.engine.reconcile import Engine, EngineSettings, Snapshot  # noqa: E402
from reconciler.source import code_files  # noqa: E402
from tests.reconciler.fakes import FakeBackend, FakeProber  # noqa: E402

TARGETS = {"config load 1000": 0.040, "cold 1000": 0.100, "cold 10000": 1.0, "one-file change 1000": 0.020, "no-op pass 1000": 0.010}


@contextmanager
def mode(fast: bool) -> Iterator[None]:
    saved = yamldoc.FAST_LOADER
    loader.PARSE_CACHE.clear()
    memo.clear_all()
    loader.PARSE_CACHE.enabled = memo.enabled = code_files.FAST = quickyaml.ENABLED = fast
    yamldoc.FAST_LOADER = saved if fast else None
    try:
        yield
    finally:
        yamldoc.FAST_LOADER = saved
        loader.PARSE_CACHE.enabled = memo.enabled = code_files.FAST = quickyaml.ENABLED = True
        loader.PARSE_CACHE.clear()
        memo.clear_all()


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def new_engine(state: Path) -> Engine:
    return Engine(
        state,
        BackendRegistry({"local": FakeBackend()}),
        EngineSettings(drain_min=0.0, drain_grace=0.0),
        prober=FakeProber(),
    )


def measure(base: Path, n: int, fast: bool, noop: bool) -> dict[str, float]:
    v1, v2 = base / f"v1-{n}", base / f"v2-{n}"
    out: dict[str, float] = {}
    with mode(fast):
        loader.PARSE_CACHE.clear()
        out["config load"] = timed(lambda: loader.load_tree(v1))
        state = base / f"state-{n}-{fast}"
        shutil.rmtree(state, ignore_errors=True)
        engine = new_engine(state)
        try:
            s1, s2 = Snapshot("rev-1", v1), Snapshot("rev-2", v2)
            loader.PARSE_CACHE.clear()
            memo.clear_all()
            out["cold"] = timed(lambda: engine.plan(s1))
            out["one-file change"] = timed(lambda: engine.plan(s2))
            if noop:
                engine.reconcile(s1)
                engine.reconcile(s1)  # probes: everything ready
                out["no-op pass"] = timed(lambda: engine.reconcile(s1))
        finally:
            engine.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    rows: list[tuple[str, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        for n in sizes:
            v1, v2 = base / f"v1-{n}", base / f"v2-{n}"
            write_tree(v1, n, "v1")
            shutil.copytree(v1, v2)
            (v2 / "svc-0000" / ".dstack.yml").write_text(SERVICE.format(name="svc-0000", greeting="v2"))
            noop = n <= 1000  # applying 10,000 replicas is the apply benchmark's job, not this one
            results: dict[bool, list[dict[str, float]]] = {False: [], True: []}
            for _ in range(args.runs):  # interleaved, so machine load hits both alike
                for fast in (False, True):
                    results[fast].append(measure(base, n, fast, noop))
            for key in results[True][0]:
                before = statistics.median(r[key] for r in results[False])
                after = statistics.median(r[key] for r in results[True])
                rows.append((f"{key} {n}", before, after))
    print(f"{'measure':<24} {'before':>10} {'after':>10} {'speed-up':>9} {'target':>8}")
    for name, before, after in rows:
        target = TARGETS.get(name)
        shown = f"{target * 1000:.0f}ms" if target else "-"
        print(f"{name:<24} {before * 1000:>8.1f}ms {after * 1000:>8.1f}ms {before / after:>8.1f}x {shown:>8}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
