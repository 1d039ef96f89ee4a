"""The local backend: each replica is a process tree on this machine (the embedded default).

Why it exists: the whole product has to work with nothing installed but Python. A replica here is
`bash run.sh` (the spec's `commands`, one per line under `set -e`, as dstack runs them) started by
a small supervisor (`local_relay.py`) in its own session and process group.

Layout under `root` (the reconciler passes `<state>/replicas`)::

    <root>/<replica_id>/replica.json   metadata: ids, owner, port, env NAMES, pid + start time
    <root>/<replica_id>/work/          copy of spec.workdir (repo at the commit, minus .git/.dstackignore)
    <root>/<replica_id>/home/          the replica's HOME (+ tmp/, its TMPDIR, when not sandboxed)
    <root>/<replica_id>/run.sh         the commands
    <root>/<replica_id>/logs/replica.log (+ .1)  stdout+stderr, size-capped, one backup
    <root>/<replica_id>/http.sock      the replica's port, exposed as a unix socket
    <root>/<replica_id>/exit.json      written by the supervisor when the commands exit
    <root>/.venvs/<spec_hash>-py3.11/  virtualenv per spec for `python:` (cached; built by the
                                       supervisor while the replica is PROVISIONING)
    <root>/.locks/<replica_id>.lock    flock serialising create/delete of one replica
    <root>/.logs/<replica_id>.log      last lines of a deleted replica

Addresses: every replica listens on its configured port inside its own network namespace
(`unshare(CLONE_NEWNET)` with `lo` up, done by the supervisor), so any number of replicas can use
port 8000. The supervisor relays `<dir>/http.sock` to `127.0.0.1:<port>` inside the namespace, and
`ReplicaInfo.address` is `unix://<abs path of the socket>` (a shorter path under /tmp when the real
one exceeds the unix-socket limit). Where namespaces are unavailable (not root, not Linux),
`NetworkMode.AUTO` falls back to the shared host network: the relay still provides the socket, and
a port already in use is refused with a TemporaryError (`NetworkMode.NAMESPACE` makes that a
PermanentError instead).

Environment: an allowlist (`spawn.replica_env`), never the reconciler's environment; the
spec's env values reach the replica only through the supervisor's process environment;
`replica.json` records the names. With `python: "3.11"` the venv's bin comes first on PATH (so
`pip install` goes there).

Sandbox (`sandbox.py`): the commands run under bubblewrap as the service's own non-root uid,
seeing only their work dir, HOME, venv and a private /tmp writable, the system read-only, and
nothing of the state directory. Without bwrap (`SandboxMode.AUTO`), trusted services run
unsandboxed with a warning in the reconciler's log and the replica's own log, and untrusted ones
(PR previews) are refused by `can_run` with the reason. Egress from the namespace goes through
the proxy's destination policy (`egress.py`): public internet only, unless the operator's
`egress_allow` widens it for a trusted service.

Adoption and crash safety (the record and how a status is read from it: `local_status.py`):
`replica.json` is written (atomically) with state "starting" before
anything is spawned, and completed with the supervisor's pid + start time afterwards. Every
process of a replica carries `TIDEGATE_REPLICA_DIR` in its environment, so a supervisor spawned by
a reconciler killed before it recorded the pid is found by scanning /proc. A new `LocalBackend` on
the same root therefore reports live replicas as RUNNING, and `create()` of a live replica returns
it instead of starting another; create/delete of one replica hold an flock, so two processes never
start it twice. A replica whose commands exited is EXITED with the exit code and its last log lines
in `message`; `create()` restarts it under the same id.

Delete is final (`stop.py`): when `delete` returns, no process of the replica exists and none can
appear later, even mid-start or after a creator was killed mid-create (every stop first revokes
the start token in `replica.json`, then kills by session and marks until nothing is left); if
SIGKILL cannot end them, `delete` raises a TemporaryError and the replica stays "deleting".

Images: `image:` runs through `docker`/`podman run` when that engine answers `info` (the engine
gives the container its own network; the port is published on a free loopback port that the relay
targets, env values are passed by name only, and delete also runs `<engine> rm -f`). Without an
engine, `can_run(spec)` returns the reason ("cannot run images: no Docker/Podman engine"), as it
does for a missing Python version, unfitting GPUs or (in NAMESPACE mode) missing namespaces, so
the reconciler can show it in the plan; `create()` raises PermanentError with the same reason.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from backends.base import (
    PermanentError,
    ReplicaInfo,
    ReplicaSpec,
    ReplicaStatus,
    TemporaryError,
)
from backends.local import confine as local_confine
from backends.local import egress as local_egress
from backends.local import host as local_host
from backends.local import proc as local_proc
from backends.local import sandbox as local_sandbox
from backends.local import spawn as local_spawn
from backends.local import stop as local_stop
from backends.local.fit import HostFit, NetworkMode
from backends.local.layout import (
    ReplicaPaths,
    container_name,
    read_json,
    script_for,
    socket_path,
    tail,
    write_json_atomic,
)
from backends.local.sandbox import SandboxMode
from backends.local.status import recorded, replica_info, start_meta
from backends.workdir import copy_workdir

__all__ = ["META", "LocalBackend", "NetworkMode", "SandboxMode", "parse_egress_rule", "socket_path"]

META = "replica.json"
KEPT_LOG_LINES = 200


def parse_egress_rule(text: str) -> str:
    """One `egress_allow` rule (`CIDR` or `CIDR:port`) in its canonical form; ValueError naming
    what is wrong. The settings check uses it before a LocalBackend is built with the rules."""
    return str(local_egress.parse_rule(text))


class LocalBackend(HostFit):
    """Replicas as process trees on this machine; see the module docstring. What fits here
    (`offers`, `can_run`) and the host facts behind it live in `HostFit` (fit.py)."""

    name = "local"
    ships_workdir = True  # each replica runs in a copy of the checkout (`work/`)

    def __init__(
        self,
        root: Path,
        owner: str,
        *,
        grace: float = 10.0,
        network: NetworkMode = NetworkMode.AUTO,
        log_max_bytes: int = 5 * 1024 * 1024,
        venv_with_pip: bool = True,
        start_timeout: float = 15.0,
        sandbox: SandboxMode = SandboxMode.AUTO,
        egress_allow: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        super().__init__(network, sandbox)
        self.root = Path(root).absolute()
        self.owner = owner
        self.grace = grace
        self.log_max_bytes = log_max_bytes
        self.venv_with_pip = venv_with_pip
        self.start_timeout = start_timeout
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        # service name -> extra egress rules (the operator's settings; trusted services only)
        self.egress_allow = {
            name: tuple(local_egress.parse_rule(r) for r in rules) for name, rules in (egress_allow or {}).items()
        }

    # ---- Backend protocol (offers and can_run: HostFit) -------------------------------------------
    def create(self, spec: ReplicaSpec) -> ReplicaInfo:
        reason = self.can_run(spec)
        if reason is not None:
            raise PermanentError(reason)
        venv = self._venv_for(spec)  # built by the supervisor, after create() returned
        paths = self._paths(spec.replica_id)
        with local_host.file_lock(paths.lock):
            self._reap()
            current = self._describe(spec.replica_id, holding_lock=True)
            meta = read_json(paths.meta)
            if current is not None and current.status in (ReplicaStatus.RUNNING, ReplicaStatus.PROVISIONING):
                if meta is not None and meta.get("pid") is None and current.handle is not None:
                    # Adopted by /proc scan (the creator died before recording it): record it now.
                    pid, started = current.handle.split(":")
                    meta.update(pid=int(pid), started=float(started), state="started")
                    write_json_atomic(paths.meta, meta)
                return current
            if meta is not None and meta.get("owner") != self.owner:
                raise PermanentError(f"{paths.dir} belongs to another owner; refusing to touch it")
            if meta is not None:  # leftovers of an exited run or an interrupted start/delete
                self._revoke(paths, meta)
                self._stop(paths, meta)
            return self._start(spec, paths, venv, attempt=int((meta or {}).get("attempt", 0)) + 1)

    def describe(self, replica_id: str) -> ReplicaInfo | None:
        self._reap()
        return self._describe(replica_id)

    def list_owned(self) -> Sequence[ReplicaInfo]:
        self._reap()
        if not self.root.is_dir():
            return []
        infos = []
        for entry in sorted(self.root.iterdir()):
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            info = self._describe(entry.name)
            if info is not None:
                infos.append(info)
        return infos

    def delete(self, replica_id: str) -> None:
        """Final: when it returns, no process of the replica exists and none can appear later
        (local_stop); a TemporaryError when SIGKILL could not end them (the delete is retried)."""
        paths = self._paths(replica_id)
        if not paths.dir.exists() and not paths.lock.exists():
            return  # never created here (a create in progress holds its lock file)
        with local_host.file_lock(paths.lock):
            if not paths.dir.exists():
                return
            recorded_meta = read_json(paths.meta)
            if recorded_meta is not None and recorded_meta.get("owner") != self.owner:
                return  # never delete what is not ours
            meta: dict[str, Any] = recorded_meta or {}
            if recorded_meta is not None:
                self._revoke(paths, meta, state="deleting")
            # Without metadata nothing was spawned yet (it is written first); look all the same.
            self._stop(paths, meta)
            self._keep_last_logs(paths)
            with contextlib.suppress(FileNotFoundError):
                Path(str(meta.get("socket") or paths.socket)).unlink()
            shutil.rmtree(paths.dir, ignore_errors=True)
        if meta.get("venv"):
            self._prune_venv(Path(str(meta["venv"])))

    def collect_garbage(self) -> list[Path]:
        """Remove lock files and kept logs that belong to nothing live (see local_gc)."""
        from backends.local.gc import collect_local_litter

        return collect_local_litter(self.root)

    def log_path(self, replica_id: str) -> Path | None:
        """The live log file of a replica (for `tidegate logs --follow`); it appears when the
        replica starts and moves to `.1` when it reaches the size cap."""
        return self._paths(replica_id).log

    def close(self) -> None:
        """Nothing to release: replicas are processes that outlive this object by design."""

    def logs(self, replica_id: str, lines: int = 100) -> list[str]:
        paths = self._paths(replica_id)
        if paths.log.exists():
            return tail([paths.log_backup, paths.log], lines)
        return tail([paths.kept_log], lines)

    # ---- internals ------------------------------------------------------------------------------
    def _paths(self, replica_id: str) -> ReplicaPaths:
        if not replica_id or "/" in replica_id or replica_id.startswith("."):
            raise PermanentError(f"invalid replica id {replica_id!r}")
        return ReplicaPaths(self.root, replica_id)

    def _reap(self) -> None:
        for pid, proc in list(self._children.items()):
            if proc.poll() is not None:
                self._children.pop(pid, None)  # another worker may have reaped it first

    def _revoke(self, paths: ReplicaPaths, meta: dict[str, Any], state: str | None = None) -> None:
        """Take back the start token before stopping: a supervisor that has not exec'd yet (so no
        scan can see it) exits instead of starting (local_stop's module docstring)."""
        meta["start_token"] = None
        if state is not None:
            meta["state"] = state
        write_json_atomic(paths.meta, meta)

    def _stop(
        self, paths: ReplicaPaths, meta: dict[str, Any], grace: float | None = None, sessions: tuple[int, ...] = ()
    ) -> None:
        """Stop every process of the replica for good (and its container, for an image)."""
        try:
            local_stop.terminate_replica(
                recorded(meta), str(paths.dir), self.grace if grace is None else grace, self._reap, sessions
            )
        except local_stop.StillRunning as e:
            raise TemporaryError(str(e)) from e
        engine = meta.get("engine")
        if engine:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(
                    [str(engine), "rm", "-f", container_name(paths.replica_id)],
                    capture_output=True,
                    timeout=max(self.grace, 10.0) + 20.0,
                )

    def _prune_venv(self, venv: Path) -> None:
        """Remove a spec's venv once no replica refers to it (after a rolling update, say).

        Safe against a concurrent create: its metadata (naming the venv) is written before its
        supervisor looks for the venv, and the supervisor rebuilds a venv that is not marked ready.
        """
        if venv.parent != self.root / ".venvs" or not venv.exists():
            return
        with local_host.file_lock(venv.parent / f".{venv.name}.lock"):
            for entry in self.root.iterdir():
                meta = read_json(entry / "replica.json") if not entry.name.startswith(".") else None
                if meta is not None and meta.get("venv") == str(venv):
                    return
            shutil.rmtree(venv, ignore_errors=True)
            local_sandbox.venv_base_file(venv).unlink(missing_ok=True)

    def _venv_for(self, spec: ReplicaSpec) -> tuple[Path, str] | None:
        """Where the spec's virtualenv lives (cached by spec hash) and the interpreter to build it."""
        if spec.python is None:
            return None
        interpreter = self._interpreter(spec.python)
        if interpreter is None:  # can_run checked it; keep mypy and races honest
            raise PermanentError(f"python {spec.python} is not installed on this machine")
        key = f"{spec.spec_hash}-py{local_host.python_minor(spec.python)}"
        return self.root / ".venvs" / key, interpreter

    def _ensure_port_free(self, port: int) -> None:
        if not local_spawn.port_is_free(port):
            why = (
                "the backend runs in shared network mode"
                if self.network == NetworkMode.SHARED
                else f"network namespaces are unavailable: {self._namespaces_unavailable()}"
            )
            raise TemporaryError(f"port {port} is busy on this host ({why})")

    def _start(
        self, spec: ReplicaSpec, paths: ReplicaPaths, venv: tuple[Path, str] | None, attempt: int
    ) -> ReplicaInfo:
        engine = self._engine_exe() if spec.image is not None else None
        # An image gets its own network from the engine; the relay reaches it on a loopback port.
        netns = (
            engine is None and self.network != NetworkMode.SHARED and self._namespaces_unavailable() is None
        )
        if engine is None and self.network == NetworkMode.NAMESPACE and not netns:
            raise PermanentError(self._namespaces_unavailable() or "network namespaces unavailable")
        host_port = local_spawn.free_loopback_port() if engine is not None else None
        if engine is None and not netns:
            self._ensure_port_free(spec.port)
        sock = paths.socket
        paths.dir.mkdir(parents=True, exist_ok=True)
        meta = start_meta(
            spec,
            self.owner,
            engine=engine,
            host_port=host_port,
            network="namespace" if netns else ("engine" if engine else "shared"),
            socket=sock,
            venv=venv[0] if venv else None,
            attempt=attempt,
        )
        write_json_atomic(paths.meta, meta)  # intent, before anything runs
        copy_workdir(spec.workdir, paths.work)
        paths.log.parent.mkdir(exist_ok=True)
        script = script_for(spec, engine=engine, owner=self.owner, host_port=host_port, work=paths.work)
        paths.script.write_text(script, encoding="utf-8")
        with contextlib.suppress(FileNotFoundError):
            paths.exit_file.unlink()
        sock.parent.mkdir(mode=0o700, parents=True, exist_ok=True)

        sandbox, uid = self._sandbox_for(spec, paths, venv) if engine is None else ((), None)
        launch = local_spawn.Launch(
            paths=paths,
            port=host_port or spec.port,
            netns=netns,
            log_max_bytes=self.log_max_bytes,
            venv=venv[0] if venv else None,
            venv_python=venv[1] if venv else None,
            venv_with_pip=self.venv_with_pip,
            sandbox=sandbox,
            venv_owner=uid if venv else None,
            egress_policy=self._egress_policy(spec).to_json() if netns else None,
            start_token=str(meta["start_token"]),
        )
        env = local_spawn.replica_env(
            os.environ, spec, paths.dir, self.owner, launch.venv,
            home=paths.home, tmpdir=Path("/tmp") if sandbox else paths.tmp,
            proxy=local_spawn.proxy_env(spec.port, spec.env) if netns else None,
            engine_client=engine is not None,
        )  # fmt: skip
        proc, handshake = local_spawn.spawn_supervisor(
            local_spawn.relay_command(launch), env, paths, self.start_timeout
        )
        self._children[proc.pid] = proc
        if not handshake.startswith("ok"):
            # Its session may hold a sandbox already (its own process group); the supervisor is our
            # unreaped child, so its pid (= its session id) cannot have been reused.
            self._children.pop(proc.pid, None)
            self._revoke(paths, meta)
            self._stop(paths, meta, grace=0.0, sessions=(proc.pid,))
            proc.wait()
            detail = handshake.removeprefix("error:").strip() or "supervisor exited without a word"
            raise TemporaryError(f"starting {spec.replica_id} failed: {detail}")
        identity = local_proc.identify(proc.pid)
        # started=0.0 marks a supervisor that already exited (its exit.json tells why).
        meta.update(pid=proc.pid, started=identity.started if identity else 0.0, state="started")
        write_json_atomic(paths.meta, meta)
        info = self._describe(spec.replica_id, holding_lock=True)
        assert info is not None
        return info

    def _sandbox_for(
        self, spec: ReplicaSpec, paths: ReplicaPaths, venv: tuple[Path, str] | None
    ) -> tuple[tuple[str, ...], int | None]:
        problem = self.sandbox_unavailable()
        return local_confine.prepare(spec, paths, self.owner, venv[0] if venv else None, problem)

    def _egress_policy(self, spec: ReplicaSpec) -> local_egress.EgressPolicy:
        allow = self.egress_allow.get(spec.service, ()) if spec.trusted else ()
        return local_confine.egress_policy(allow)

    def _describe(self, replica_id: str, holding_lock: bool = False) -> ReplicaInfo | None:
        return replica_info(self.name, self.owner, self._paths(replica_id), self.logs, holding_lock=holding_lock)

    def _keep_last_logs(self, paths: ReplicaPaths) -> None:
        last = self.logs(paths.replica_id, KEPT_LOG_LINES)
        if not last:
            return
        paths.kept_log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Raw replica output (may quote its secrets): private like the live log.
        fd = os.open(paths.kept_log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(last) + "\n")
