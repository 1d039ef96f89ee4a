"""Real git repositories for tests: a bare remote, a working clone to push from, commits, PR refs.

Why one module: the source, preview and end-to-end tests all drive tidegate through a real bare
remote (no network); they used to carry their own copies of these few helpers.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

# A fixed identity and default branch: tests must not depend on the machine's git config.
GIT_CONFIG = ("-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main")


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *GIT_CONFIG, *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def commit(work: Path, files: dict[str, str | None], message: str = "c", *, missing_ok: bool = False) -> str:
    """Write `files` (None deletes one) and commit everything; returns the new HEAD sha."""
    for name, text in files.items():
        p = work / name
        if text is None:
            p.unlink(missing_ok=missing_ok)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
    git(work, "add", "-A")
    git(work, "commit", "-q", "--allow-empty", "-m", message)
    return git(work, "rev-parse", "HEAD")


def commit_push(work: Path, files: dict[str, str | None], message: str = "c", *, missing_ok: bool = False) -> str:
    """`commit`, then push main to origin."""
    sha = commit(work, files, message, missing_ok=missing_ok)
    git(work, "push", "-q", "origin", "main")
    return sha


def bare_remote(tmp_path: Path) -> tuple[Path, Path]:
    """An empty bare remote (`remote.git`) and a working repo (`work`) with it as origin, on main."""
    bare, work = tmp_path / "remote.git", tmp_path / "work"
    bare.mkdir()
    work.mkdir()
    git(bare, "init", "-q", "--bare", "-b", "main")
    git(work, "init", "-q", "-b", "main")
    git(work, "remote", "add", "origin", str(bare))
    return bare, work


def make_remote(tmp_path: Path, files: dict[str, str]) -> tuple[Path, Path]:
    """A bare remote whose main holds `files`, and a working clone to push from."""
    bare, work = bare_remote(tmp_path)
    commit_push(work, dict(files), "base")
    return bare, work


def open_pr(work: Path, number: int, files: dict[str, str | None]) -> str:
    """What GitHub does when a PR is opened or pushed to: the head lands in refs/pull/<N>/head."""
    git(work, "checkout", "-q", "-B", f"pr-{number}", "main")
    sha = commit(work, files, f"pr {number}")
    git(work, "push", "-q", "--force", "origin", f"HEAD:refs/pull/{number}/head")
    git(work, "checkout", "-q", "main")
    return sha
