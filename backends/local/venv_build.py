"""Building a spec's virtualenv inside the local backend's supervisor, once per spec.

Why a module of its own: the supervisor (relay.py) runs a replica; building its environment first
(in place, under an flock, marked ready last, handed to a sandboxed replica's uid) is a separate
job with its own failure story. Standard library only: it runs inside the supervisor
(`python -I -S`, by path), independent of the replica's virtualenv.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
from pathlib import Path
from typing import Any, Protocol

READY_MARKER = ".tidegate-ready"  # written last into a virtualenv that was built completely


class LogSink(Protocol):
    """Where the build's output goes: the replica's log (relay.RotatingLog)."""

    def write(self, data: bytes) -> None: ...


def _sandbox() -> Any:
    """sandbox.py: a sibling module when the supervisor runs by path (its folder is on sys.path),
    else the package's (tests importing the supervisor's modules)."""
    if __package__:
        from backends.local import sandbox

        return sandbox
    import importlib

    return importlib.import_module("sandbox")


def ensure_venv(
    venv: Path, interpreter: str, with_pip: bool, log: LogSink, owner: int | None = None
) -> bool:
    """Build the spec's virtualenv once (replicas of one spec share it); False when it failed.

    Built in place (venvs are not relocatable) under an flock, and marked ready last, so a venv
    half-built by a killed replica is detected and rebuilt by the next one. With `owner` (a
    sandboxed replica's uid) the venv is that uid's, so `pip install` in the commands works: it is
    handed over right after the build, before any replica can touch it, and never chowned again (a
    tree a running replica can change is no place for a root `chown -R`); a venv of another owner
    is rebuilt instead. Its base prefix is recorded beside it at the same moment (sandbox.py).
    """
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        ready = (venv / READY_MARKER).exists()
        if ready and owner is not None:
            sandbox = _sandbox()
            ready = venv.stat().st_uid == owner and sandbox.venv_base_file(venv).exists()
        if ready:
            return True
        cmd = [interpreter, "-m", "venv", *([] if with_pip else ["--without-pip"]), str(venv)]
        log.write(f"[tidegate] creating virtualenv: {' '.join(cmd)}\n".encode())
        try:
            if venv.exists():
                shutil.rmtree(venv)
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True)
            log.write(proc.stdout + proc.stderr)
            if proc.returncode == 0:
                (venv / READY_MARKER).write_text(interpreter + "\n")
                if owner is not None:
                    sandbox = _sandbox()
                    base = sandbox.venv_base_prefix(venv)  # written by the build, not yet by a replica
                    sandbox.venv_base_file(venv).write_text(f"{base or ''}\n")
                    sandbox.chown_tree(venv, owner)
                return True
            problem = f"exit code {proc.returncode}"
        except OSError as e:
            problem = str(e)
        log.write(f"[tidegate] creating the virtualenv failed: {problem}\n".encode())
        shutil.rmtree(venv, ignore_errors=True)
        return False
