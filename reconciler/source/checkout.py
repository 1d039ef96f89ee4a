"""Where desired state comes from: a git branch (cloned + fetched) or a watched local working tree.

The source turns "the repo at some moment" into a checkout: a revision id and a directory holding
the repository's files at that revision, which the loader reads and the engine hands to backends as
the replicas' working directory. It owns `<state>/repos/` (one bare clone per URL) and
`<state>/revisions/` (one extracted tree per revision, the last few kept).

Two kinds, one small interface (`current()`):
- `GitSource`: fetch `refs/heads/<branch>` from the URL into a bare repo, `git archive` the commit
  into `revisions/<sha>/` (once; a revision already extracted is not extracted again).
- `WorktreeSource`: a local folder watched with watchfiles; the revision is
  `worktree-<content hash>` so an unchanged tree yields the same revision and no new work.

The observed revision (and the last fetch error) is recorded in `<state>/source.json`; URLs there
and in errors have credentials stripped.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from reconciler.config.loader import TreeIndex
from reconciler.source.trees import SKIP_DIRS, IgnoreFn, copy_tree, tree_hash, tree_index
from reconciler.source.trees import extract_revision as extract_revision  # pr_source extracts too
from tidegate.fsio import build_dir_atomic, write_json_atomic

KEEP_REVISIONS = 5
REPOS_DIR = "repos"
REVISIONS_DIR = "revisions"
SOURCE_FILE = "source.json"


class SourceError(Exception):
    """The source could not be read (unreachable remote, missing branch, unreadable folder)."""


@dataclass(frozen=True)
class Checkout:
    """The repository's files at one revision; `config_path` is the sub-folder holding configs."""

    revision: str
    root: Path
    config_path: str | None
    # What `root` holds as git knows it (paths -> blob ids), when the source extracted it from git
    # and it is plain (see `tree_index`): the loader and the code hash then need not walk it.
    index: TreeIndex | None = None


class Source(Protocol):
    def current(self) -> Checkout:
        """Fetch if needed and return the checkout of the newest revision. Raises SourceError."""
        ...

    def describe(self) -> str:
        """A credential-free one-line description, for logs and `ps`."""
        ...


def redact_url(url: str) -> str:
    """Drop `user:password@` from URLs so tokens in clone URLs never reach logs or state files."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def url_key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:16]


class GitSource:
    """A branch of a git remote, fetched into `<state>/repos/<hash of url>/` (bare)."""

    def __init__(
        self,
        url: str,
        branch: str,
        state_dir: Path,
        config_path: str | None = None,
        keep: int = KEEP_REVISIONS,
        borrow_from: Path | None = None,
    ) -> None:
        self.url = url
        # Another state dir whose clone of this URL may lend its objects (read-only, through git's
        # alternates): `plan` fetches into a scratch dir without refetching the whole history.
        self.borrow_from = borrow_from
        self.branch = branch
        self.state_dir = state_dir
        self.config_path = config_path
        self.keep = keep
        self.repo_dir = state_dir / REPOS_DIR / url_key(url)
        self.revisions_dir = state_dir / REVISIONS_DIR
        self._ref = f"refs/tidegate/{branch}"
        self.observed: str | None = None
        self._index: tuple[str, TreeIndex | None] | None = None  # (sha, its index)

    def describe(self) -> str:
        return f"{redact_url(self.url)}@{self.branch}" + (f":{self.config_path}" if self.config_path else "")

    def _repo(self) -> object:
        repo = open_bare_repo(self.repo_dir)
        if self.borrow_from is not None:
            objects = self.borrow_from / REPOS_DIR / url_key(self.url) / "objects"
            if objects.is_dir():
                (self.repo_dir / "objects" / "info").mkdir(parents=True, exist_ok=True)
                (self.repo_dir / "objects" / "info" / "alternates").write_text(f"{objects}\n")
        return repo

    def fetch(self) -> str:
        """Fetch the branch; return its commit sha."""
        import git

        repo = self._repo()
        assert isinstance(repo, git.Repo)
        try:
            repo.git.fetch("--quiet", "--no-tags", "--force", self.url, f"+refs/heads/{self.branch}:{self._ref}")
            sha = str(repo.git.rev_parse("--verify", f"{self._ref}^{{commit}}"))
        except git.GitCommandError as e:
            message = git_error(e, self.url)
            if "No space left on device" in message:
                message = f"disk full at {self.repo_dir} ({message})"
            record_source(self.state_dir, self.describe(), self.observed, error=message)
            raise SourceError(f"cannot fetch {self.describe()}: {message}") from e
        return sha

    def current(self) -> Checkout:
        sha = self.fetch()
        root = self.revisions_dir / sha
        last = self._index
        index = last[1] if last is not None and last[0] == sha else self._tree_index(sha)
        self._index = (sha, index)
        if not root.is_dir():
            # the revision read last lends its unchanged files (hard links), while it is there
            lender = None
            if last is not None and last[1] is not None and (self.revisions_dir / last[0]).is_dir():
                lender = (self.revisions_dir / last[0], last[1])
            self._extract(sha, root, index, lender)
        if sha != self.observed:
            self.observed = sha
            record_source(self.state_dir, self.describe(), sha)
            prune_revisions(self.revisions_dir, keep=self.keep, protect={sha} | deployed_revisions(self.state_dir))
        return Checkout(sha, root, self.config_path, index)

    def _tree_index(self, sha: str) -> TreeIndex | None:
        import git

        try:
            return tree_index(self._repo(), sha)
        except git.GitCommandError:
            return None  # the folder is walked instead

    def _extract(
        self, sha: str, root: Path, index: TreeIndex | None = None, previous: tuple[Path, TreeIndex] | None = None
    ) -> None:
        import git

        try:
            extract_revision(self._repo(), sha, root, index, previous)
        except git.GitCommandError as e:
            raise SourceError(f"cannot read revision {sha[:12]}: {git_error(e, self.url)}") from e


class WorktreeSource:
    """A local folder (usually a working tree), read as it is on disk. `--watch` mode."""

    def __init__(self, path: Path, state_dir: Path, config_path: str | None = None, keep: int = KEEP_REVISIONS) -> None:
        self.path = path
        self.state_dir = state_dir
        self.config_path = config_path
        self.keep = keep
        self.revisions_dir = state_dir / REVISIONS_DIR
        self.observed: str | None = None

    def describe(self) -> str:
        return f"{self.path} (watched)" + (f":{self.config_path}" if self.config_path else "")

    def current(self) -> Checkout:
        if not self.path.is_dir():
            raise SourceError(f"{self.path} is not a folder")
        ignore = worktree_ignore(self.path)
        revision = "worktree-" + tree_hash(self.path, ignore)[:16]
        root = self.revisions_dir / revision
        if not root.is_dir():
            build_dir_atomic(root, lambda tmp: copy_tree(self.path, tmp, ignore))
        if revision != self.observed:
            self.observed = revision
            record_source(self.state_dir, self.describe(), revision)
            prune_revisions(
                self.revisions_dir, keep=self.keep, protect={revision} | deployed_revisions(self.state_dir)
            )
        return Checkout(revision, root, self.config_path)

    def watch(self, on_change: Callable[[], None], stop: threading.Event) -> threading.Thread:
        """Call `on_change` once the tree has been quiet for WATCH_QUIET_MS after a change, until
        `stop` is set; what git ignores, `.dstackignore`d files and editor droppings never count."""
        return watch_folder(
            self.path, on_change, stop, name="tidegate-worktree-watch", ignore=worktree_ignore(self.path),
            quiet_ms=WATCH_QUIET_MS,
        )  # fmt: skip


def watch_folder(
    path: Path,
    on_change: Callable[[], None],
    stop: threading.Event,
    name: str,
    poll_every: float | None = None,
    ignore: IgnoreFn | None = None,
    quiet_ms: int = 50,
) -> threading.Thread:
    """A daemon thread running watchfiles on `path` (VCS/cache folders ignored). With
    `poll_every`, `on_change` also runs after that many idle seconds: a change made before the
    watch was registered is then still seen, at the latest one period later."""
    import watchfiles

    def keep(change: watchfiles.Change, filename: str) -> bool:
        if set(Path(filename).parts) & SKIP_DIRS:
            return False
        if ignore is None:
            return True
        parts = Path(os.path.relpath(filename, path)).parts
        if not parts or parts[0] == "..":
            return True
        folder = Path(path)
        for part in parts:  # the file, or a folder above it, may be ignored
            if part in ignore(str(folder), [part]):
                return False
            folder = folder / part
        return True

    def run() -> None:
        path.mkdir(parents=True, exist_ok=True)
        for changes in watchfiles.watch(
            path,
            watch_filter=keep,
            stop_event=stop,
            debounce=max(150, quiet_ms * 5),
            step=quiet_ms,
            rust_timeout=int((poll_every or 5) * 1000),
            yield_on_timeout=poll_every is not None,
        ):
            if changes or poll_every is not None:
                on_change()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread



# `--watch`: editors' swap, backup and lock files (vim, emacs, JetBrains, macOS) never count as a
# change and never reach a revision snapshot. With `.gitignore` (at any depth) and the root
# `.dstackignore`; `SKIP_DIRS` (.git, node_modules, .venv, __pycache__, caches) is always out.
EDITOR_DROPPINGS = ("*.swp", "*.swo", "*.swx", "*~", ".#*", "#*#", "4913", ".DS_Store", "*___jb_tmp___")
WATCH_QUIET_MS = 300  # a burst of saves is one change once the tree has been quiet this long


def worktree_ignore(root: Path) -> IgnoreFn:
    """What a watched working tree leaves out of its revision (hash and snapshot) and its watch:
    what git would ignore, what the root `.dstackignore` excludes, and editor droppings. Each
    folder's `.gitignore` is read when the folder is first seen (os.walk goes top-down)."""
    import pathspec

    top = os.path.normpath(root)
    droppings = pathspec.GitIgnoreSpec.from_lines(EDITOR_DROPPINGS)
    specs: dict[str, pathspec.GitIgnoreSpec | None] = {}

    def spec_of(rel_dir: str) -> pathspec.GitIgnoreSpec | None:
        if rel_dir not in specs:
            names = (".gitignore", ".dstackignore") if rel_dir == "" else (".gitignore",)
            lines: list[str] = []
            for name in names:
                try:
                    lines += (Path(top, rel_dir) / name).read_text(encoding="utf-8", errors="replace").splitlines()
                except OSError:
                    continue
            specs[rel_dir] = pathspec.GitIgnoreSpec.from_lines(lines) if lines else None
        return specs[rel_dir]

    def ignore(directory: str, names: list[str]) -> set[str]:
        rel_dir = os.path.relpath(os.path.normpath(directory), top)
        rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/")
        if rel_dir.startswith(".."):
            return set()
        levels = rel_dir.split("/") if rel_dir else []
        ancestors = ["", *("/".join(levels[: i + 1]) for i in range(len(levels)))]
        out: set[str] = set()
        for name in names:
            if droppings.match_file(name):
                out.add(name)
                continue
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if os.path.isdir(os.path.join(directory, name)):
                rel += "/"
            for base in ancestors:
                spec = spec_of(base)
                if spec is not None and spec.match_file(rel[len(base) + 1 :] if base else rel):
                    out.add(name)
                    break
        return out

    return ignore


def prune_revisions(folder: Path, keep: int, protect: set[str]) -> list[str]:
    """Delete extracted revisions beyond the newest `keep` (by mtime); never the protected ones.
    Replicas run from their own copies, so an old revision folder is only a cache."""
    if not folder.is_dir():
        return []
    entries = [p for p in folder.iterdir() if p.is_dir()]
    stale = [p for p in entries if p.name.startswith(".") and time.time() - p.stat().st_mtime > 3600]
    live = sorted((p for p in entries if not p.name.startswith(".")), key=lambda p: p.stat().st_mtime, reverse=True)
    removed: list[str] = []
    for p in stale + live[keep:]:
        if p.name in protect:
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p.name)
    return removed


def deployed_revisions(state_dir: Path) -> set[str]:
    """Revisions some service still runs (a service kept at its last good revision restarts its
    replicas from that folder), read from state.json without the engine; from its backup when
    state.json cannot be read (a broken state must not let the prune take a running revision)."""
    found: set[str] = set()
    for name in ("state.json", "state.json.backup"):
        try:
            doc = json.loads((state_dir / name).read_bytes())
            found |= {str(s["revision"]) for s in doc.get("services", {}).values() if s.get("revision")}
        except (OSError, ValueError, AttributeError, TypeError):
            continue  # missing or unreadable: the backup's revisions are protected instead
        if name == "state.json":
            return found
    return found


def record_source(state_dir: Path, description: str, revision: str | None, error: str | None = None) -> bool:
    """`<state>/source.json`: what the source last observed (for `ps`); written atomically. Only a
    courtesy for `ps`: a disk that takes no writes is reported by the engine, not here."""
    body = {"schema_version": 1, "source": description, "revision": revision, "error": error, "at": time.time()}
    try:
        write_json_atomic(state_dir / SOURCE_FILE, body)
    except OSError:
        return False
    return True


def read_source(state_dir: Path) -> dict[str, object]:
    try:
        data = json.loads((state_dir / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def open_bare_repo(repo_dir: Path) -> Any:
    """The bare clone in `repo_dir`, created empty the first time (branch and PR refs share it)."""
    import git  # gitpython; imported here so `tidegate ps` never pays for it

    if (repo_dir / "HEAD").exists() or (repo_dir / ".git").exists():
        return git.Repo(repo_dir)
    repo_dir.parent.mkdir(parents=True, exist_ok=True)
    return git.Repo.init(repo_dir, bare=True)


def git_error(e: Exception, url: str) -> str:
    text = str(getattr(e, "stderr", "") or e).strip().replace(url, redact_url(url))
    lines = [ln.strip().removeprefix("stderr:").strip(" '") for ln in text.splitlines() if ln.strip()]
    return "; ".join(ln for ln in lines if ln) or "git failed"


def make_source(
    repo: str, branch: str, state_dir: Path, config_path: str | None, watch: bool, borrow_from: Path | None = None
) -> Source:
    """`--watch` reads the folder as it is; anything else is fetched as a git branch. `state_dir`
    is where the source keeps its clone, revisions and source.json (a scratch folder for `plan`,
    which never writes the real state; `borrow_from` then lends that state's clone's objects)."""
    if watch:
        path = Path(repo)
        if "://" in repo or not path.is_dir():
            raise SourceError("--watch needs --repo to be a local folder")
        return WorktreeSource(path, state_dir, config_path)
    return GitSource(repo, branch, state_dir, config_path, borrow_from=borrow_from)
