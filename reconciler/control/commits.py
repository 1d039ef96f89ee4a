"""Commit subject and author of a deployed revision, from the bare clone `up` keeps in the state dir.

Best effort and cached: a revision never changes its commit, so each sha is asked once; a state
dir without a clone (a `--watch` tree) or an unknown sha gives None.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CommitInfo:
    subject: str
    author: str
    at: float


class CommitLookup:
    def __init__(self, repos_dir: Path | None) -> None:
        self.repos_dir = repos_dir
        self._cache: dict[str, CommitInfo | None] = {}

    def get(self, sha: str) -> CommitInfo | None:
        if sha in self._cache:
            return self._cache[sha]
        found = self._lookup(sha)
        if found is not None or len(self._cache) < 4096:
            self._cache[sha] = found
        return found

    def _lookup(self, sha: str) -> CommitInfo | None:
        if not sha or self.repos_dir is None or not self.repos_dir.is_dir() or not all(c in "0123456789abcdef" for c in sha):
            return None
        for repo in sorted(p for p in self.repos_dir.iterdir() if p.is_dir()):
            try:
                out = subprocess.run(
                    ["git", "--git-dir", str(repo), "log", "-1", "--format=%s%x00%an%x00%ct", sha, "--"],
                    capture_output=True, text=True, timeout=5, check=False,
                )
            except (OSError, subprocess.TimeoutExpired):
                continue
            parts = out.stdout.rstrip("\n").split("\x00")
            if out.returncode == 0 and len(parts) == 3 and parts[2].isdigit():
                return CommitInfo(subject=parts[0], author=parts[1], at=float(parts[2]))
        return None
