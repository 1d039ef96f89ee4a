"""`make up`: a newcomer's first run — a local git repo made from `examples/`, then `tidegate up` on it.

What it does, from a fresh clone with only Python 3.11, git and make:
1. copies the local-runnable examples (`examples/local-*/` and the servers they run,
   `examples/servers/`) into `<state>/quickstart-repo/examples/`, `git init`s it on `main` and
   commits (on later runs it syncs the copy and commits only when something changed, so editing
   an example and re-running `make up` deploys the edit);
2. creates an API token named `quickstart` when none exists, and prints it (once: only its hash
   is kept);
3. runs `tidegate up --repo <that repo> --path examples` on the local backend, with the state in
   `./state`, which prints each service URL and a curl / OpenAI SDK line once services are up.

The GPU examples (TGI Mistral, vLLM Llama, SmolLM2 which compiles llama.cpp for minutes) are
deliberately not copied: they need a cloud backend (`--settings`) or a long build, and a first
run should be up in seconds. Push them to a repo of your own to deploy them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from tidegate.state_dir import choose_state_dir

REPO_NAME = "quickstart-repo"
TOKEN_NAME = "quickstart"
GIT_ID = ("-c", "user.name=tidegate quickstart", "-c", "user.email=quickstart@tidegate.invalid")


def local_examples(examples: Path) -> list[Path]:
    """The example folders that run on the local backend with nothing but Python."""
    chosen = [p for p in sorted(examples.glob("local-*")) if (p / ".dstack.yml").is_file()]
    servers = examples / "servers"
    return [*chosen, servers] if servers.is_dir() else chosen


def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", *GIT_ID, *args], cwd=repo, check=True, capture_output=True, text=True)
    return out.stdout.strip()


def sync_repo(examples: Path, repo: Path) -> tuple[str, bool]:
    """Make `repo` hold the local examples under `examples/`; return (head sha, committed now)."""
    repo.mkdir(parents=True, exist_ok=True)
    if not (repo / ".git").exists():
        _git(repo, "init", "-q", "-b", "main")
    target = repo / "examples"
    shutil.rmtree(target, ignore_errors=True)
    for folder in local_examples(examples):
        shutil.copytree(folder, target / folder.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    readme = repo / "README.md"
    if not readme.exists():
        readme.write_text(
            "# tidegate quickstart configs\n\nMade by `make up` from the project's examples/. "
            "Commit here and the running `tidegate up` deploys it.\n"
        )
    _git(repo, "add", "-A")
    if not _git(repo, "status", "--porcelain"):
        return _git(repo, "rev-parse", "HEAD"), False
    _git(repo, "commit", "-q", "-m", "quickstart: local examples")
    return _git(repo, "rev-parse", "HEAD"), True


def ensure_token(state_dir: Path) -> str | None:
    """A new token when none exists (returned once), else None."""
    from gateway.access.tokens import create_token, load_records

    if load_records(state_dir):
        return None
    return create_token(state_dir, TOKEN_NAME)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reconciler.cli.quickstart", description=__doc__.splitlines()[0])
    parser.add_argument("--state", help="state directory (default: $TIDEGATE_STATE or ./state)")
    parser.add_argument("--examples", default=None, help="examples folder (default: the project's examples/)")
    parser.add_argument("--listen", default=None, help="gateway address (default 127.0.0.1:8080)")
    parser.add_argument("--prepare-only", action="store_true", help="make the repo and token, do not run up")
    args = parser.parse_args(argv)

    state_dir = choose_state_dir(args.state, os.environ).resolve()
    examples = Path(args.examples) if args.examples else Path(__file__).resolve().parents[2] / "examples"
    if not examples.is_dir():
        print(f"error: no examples folder at {examples}", file=sys.stderr)
        return 1
    if shutil.which("git") is None:
        print("error: git is not installed (tidegate deploys from git repositories)", file=sys.stderr)
        return 1
    repo = state_dir / REPO_NAME
    sha, committed = sync_repo(examples, repo)
    names = ", ".join(p.name for p in local_examples(examples) if p.name != "servers")
    print(f"quickstart repo: {repo} at {sha[:12]}{' (new commit)' if committed else ''}: {names}")
    token = ensure_token(state_dir)
    if token is not None:
        print("API token (shown only now; `tidegate token create NAME` makes more):")
        print(f"  export TOKEN={token}")
    else:
        print("API tokens exist already; `tidegate token create NAME` makes another.")
    if args.prepare_only:
        return 0
    print(f"edit {repo}/examples and commit there: the running tidegate deploys each commit.")
    from reconciler.cli.main import main as cli_main

    up = ["up", "--repo", str(repo), "--path", "examples", "--state", str(state_dir), "--interval", "10"]
    if args.listen:
        up += ["--listen", args.listen]
    return cli_main(up)


if __name__ == "__main__":
    raise SystemExit(main())
