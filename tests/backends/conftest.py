"""Fixtures for backend tests: a tiny HTTP service, unix-socket HTTP, and a process-leak guard.

Every local replica started by a test lives under the test's tmp dir, and every process of a
replica carries `TIDEGATE_REPLICA_DIR` in its environment; the guard deletes what the test left
and then fails the test if any marked process under its tmp dir is still alive.
"""

from __future__ import annotations

import signal
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from backends.local.backend import LocalBackend, NetworkMode
from backends.local.proc import MARK_DIR

# A service that answers GET with facts about itself (which replica, its env, its interpreter).
APP = textwrap.dedent(
    """
    import json, os, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({
                "replica": os.environ.get("TIDEGATE_REPLICA"),
                "greeting": os.environ.get("GREETING"),
                "prefix": sys.prefix,
                "virtual_env": os.environ.get("VIRTUAL_ENV"),
                "cwd": os.getcwd(),
                "files": sorted(os.listdir(".")),
            }).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    print("serving on", port, flush=True)
    HTTPServer(("127.0.0.1", port), Handler).serve_forever()
    """
)


def processes_under(root: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            mark = proc.environ().get(MARK_DIR)
            if mark is not None and mark.startswith(str(root)) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """A 'repository at the deployed commit': the app plus a .git dir that must not be copied."""
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (repo / "app.py").write_text(APP)
    return repo


@pytest.fixture
def local_root(tmp_path: Path) -> Iterator[Path]:
    """The backend root; at teardown everything under it is deleted and leaks fail the test."""
    root = tmp_path / "replicas"
    yield root
    cleaner = LocalBackend(root=root, owner="test-owner", grace=1.0, network=NetworkMode.AUTO)
    for info in cleaner.list_owned():
        cleaner.delete(info.replica_id)
    leaked = processes_under(tmp_path)
    for proc in leaked:
        proc.send_signal(signal.SIGKILL)
    assert not leaked, f"processes left running: {[p.cmdline() for p in leaked]}"


@pytest.fixture
def make_backend(local_root: Path) -> Callable[..., LocalBackend]:
    def make(**kwargs: Any) -> LocalBackend:
        kwargs.setdefault("grace", 2.0)
        kwargs.setdefault("venv_with_pip", False)
        return LocalBackend(root=local_root, owner="test-owner", **kwargs)

    return make
