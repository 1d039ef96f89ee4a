"""Plan benchmark (not a test): load + validate + plan of N services, before and after the fast
config path, measured in the same run. Prints a table (issue 13's "Plans" targets).

- before: every cache and fast path off: PyYAML's pure-Python SafeLoader and no yaml-rs
  (`yamldoc.FAST_LOADER = None`, `quickyaml.ENABLED = False`), no parse cache
  (`PARSE_CACHE.enabled = False`), no desired-service memos
  (`engine.memo.enabled = False`, which also leaves the load's objects young at the end of the
  collector's pause), the code hash by the generic tree walk (`code_files.FAST = False`) and
  `Engine.plan` on a deep copy of the whole state (`doc_copy.COPY_ON_WRITE = False`): every file
  parsed, validated and resolved on every load.
- after: all of them on (the defaults).

The two revisions come the way production gets them: a git repository with two branches (v1;
v2 = v1 with one file changed) read through the real `GitSource` (fetch into a bare clone, `git
archive` into a revision folder, `git ls-tree` for the folder's index). "before" plans the same
folders without the index (the walk and a read of every file, as before it existed).

Rows (each the median of --runs, in-process, the real Engine on the in-memory fake backend):
- config load: `loader.load_tree` alone on the tree, empty parse cache (read + parse + validate;
  spec hashes are computed when first read; issue 13 gives it ~40 ms of the cold 1,000 plan's 100);
- cold: a new Engine plans a tree of N files with an empty parse cache (load + validate + plan);
- one-file change: the same Engine plans a new revision whose tree differs in one file;
- no-op pass: `reconcile` of the revision it already applied (everything ready; the median of
  five such passes in a row);
- one-file change pass: then `reconcile` of the next revision (plans and applies the change: the
  changed service's new replica created on the fake backend, every other service untouched);
- restart: what `tidegate up` does after a restart: a new Engine (every in-process cache emptied
  by `forget()`, the state read back from its folder, the same backend with the N replicas still
  running) plans the revision the state already applied: load + validate + plan over N records;
- checkout ...: the source's own time (fetch + extraction + index), not part of the rows above:
  the first revision into an empty state folder, then the next one (its own fetch and folder).

Usage: .venv/bin/python bench/plans.py [--sizes 1000,10000] [--runs 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import subprocess
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
from reconciler.config import canonical, loader, models, quickyaml, yamldoc  # noqa: E402
from reconciler.engine import memo, settled  # noqa: E402
from reconciler.engine.reconcile import Engine, EngineSettings, Snapshot  # noqa: E402
from reconciler.source import code_files, trees  # noqa: E402
from reconciler.source.checkout import GitSource  # noqa: E402
from reconciler.state import doc_copy  # noqa: E402
from tests.reconciler.fakes import FakeBackend, FakeProber  # noqa: E402

TARGETS = {"config load 1000": 0.040, "cold 1000": 0.100, "cold 10000": 1.0, "one-file change 1000": 0.020, "no-op pass 1000": 0.010, "one-file change pass 1000": 0.020, "restart 1000": 0.100}


def forget() -> None:
    """Every in-process cache emptied: what a new process starts with."""
    loader.PARSE_CACHE.clear()
    canonical.clear()
    quickyaml.clear()
    memo.clear_all()
    code_files.clear_cache()
    for m in models.MEMOS.values():
        m.clear()


def switch(on: bool) -> None:
    loader.PARSE_CACHE.enabled = memo.enabled = code_files.FAST = settled.enabled = quickyaml.ENABLED = on
    canonical.FAST = doc_copy.COPY_ON_WRITE = on
    for m in models.MEMOS.values():
        m.enabled = on


@contextmanager
def mode(fast: bool) -> Iterator[None]:
    saved = yamldoc.FAST_LOADER
    forget()
    switch(fast)
    yamldoc.FAST_LOADER = saved if fast else None
    try:
        yield
    finally:
        yamldoc.FAST_LOADER = saved
        switch(True)
        forget()


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def new_engine(state: Path, backend: FakeBackend | None = None) -> Engine:
    return Engine(
        state,
        BackendRegistry({"local": backend or FakeBackend()}),
        EngineSettings(drain_min=0.0, drain_grace=0.0),
        prober=FakeProber(),
    )


def git_repo(repo: Path, n: int) -> None:
    """A repository with branch v1 (N services) and branch v2 (v1 with svc-0000's file changed);
    `checkouts` moves main from one to the other."""

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)

    write_tree(repo, n, "v1")
    git("init", "-q", "-b", "v1")
    git("add", "-A")
    git("-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "v1")
    git("checkout", "-q", "-b", "v2")
    (repo / "svc-0000" / ".dstack.yml").write_text(SERVICE.format(name="svc-0000", greeting="v2"))
    git("-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qam", "v2")


def checkouts(base: Path, n: int, out: dict[str, float], fast: bool = True) -> tuple[Snapshot, Snapshot]:
    """Both revisions through the real GitSource (one, as the daemon has: it lends the first
    revision's files to the second) into a fresh state folder, timed. Not `fast`: every revision
    through `git archive`, as before the index."""
    state = base / f"source-{n}"
    shutil.rmtree(state, ignore_errors=True)
    snaps: list[Snapshot] = []
    repo = base / f"repo-{n}"
    source = GitSource(str(repo), "main", state)
    trees.FROM_INDEX = fast
    try:
        for branch, row in (("v1", "checkout first revision"), ("v2", "checkout next revision")):
            # main at v1, then pushed on to v2
            subprocess.run(["git", "-C", str(repo), "update-ref", "refs/heads/main", f"refs/heads/{branch}"], check=True)
            t = time.perf_counter()
            c = source.current()
            out[row] = time.perf_counter() - t
            snaps.append(Snapshot(c.revision, c.root, c.config_path, c.index))
    finally:
        trees.FROM_INDEX = True
    return snaps[0], snaps[1]


def measure(base: Path, n: int, fast: bool, noop: bool) -> dict[str, float]:
    out: dict[str, float] = {}
    s1, s2 = checkouts(base, n, out, fast)
    if not fast:  # before the index: the folders are walked and every file is read
        s1, s2 = dataclasses.replace(s1, index=None), dataclasses.replace(s2, index=None)
    with mode(fast):
        forget()
        out["config load"] = timed(lambda: loader.load_tree(s1.root, index=s1.index))
        state = base / f"state-{n}-{fast}"
        shutil.rmtree(state, ignore_errors=True)
        engine = new_engine(state)
        try:
            forget()
            out["cold"] = timed(lambda: engine.plan(s1))
            out["one-file change"] = timed(lambda: engine.plan(s2))
            if noop:
                engine.reconcile(s1)
                engine.reconcile(s1)  # probes: everything ready
                # Steady state: the median of five passes in a row (one may meet a GC pause).
                out["no-op pass"] = statistics.median(timed(lambda: engine.reconcile(s1)) for _ in range(5))
                # The push as a running system meets it: the pass that plans and applies it.
                out["one-file change pass"] = timed(lambda: engine.reconcile(s2))
        finally:
            engine.close()
        if noop:
            # A restart: the replicas keep running on the backend, the process starts afresh.
            running = engine.backends.get("local")
            assert isinstance(running, FakeBackend)
            forget()
            engine = new_engine(state, running)
            try:
                out["restart"] = timed(lambda: engine.plan(s2))
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
            git_repo(base / f"repo-{n}", n)
            noop = n <= 1000  # applying 10,000 replicas is the apply benchmark's job, not this one
            results: dict[bool, list[dict[str, float]]] = {False: [], True: []}
            for _ in range(args.runs):  # interleaved, so machine load hits both alike
                for fast in (False, True):
                    results[fast].append(measure(base, n, fast, noop))
            for key in results[True][0]:
                before = statistics.median(r[key] for r in results[False])
                after = statistics.median(r[key] for r in results[True])
                rows.append((f"{key} {n}", before, after))
    print(f"{'measure':<32} {'before':>10} {'after':>10} {'speed-up':>9} {'target':>8}")
    for name, before, after in rows:
        target = TARGETS.get(name)
        shown = f"{target * 1000:.0f}ms" if target else "-"
        print(f"{name:<32} {before * 1000:>8.1f}ms {after * 1000:>8.1f}ms {before / after:>8.1f}x {shown:>8}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
