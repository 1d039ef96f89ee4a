"""The per-replica supervisor of the local backend: namespace, log pump, unix-socket relay.

Why it exists: every replica of every service may listen on the same port (8000 in the dstack
examples). On Linux each replica therefore gets its own network namespace, and the gateway cannot
reach a port inside it. This small process enters the namespace first, starts the replica's
commands inside it, and exposes `127.0.0.1:<port>` of the namespace as a unix socket in the
replica's directory. Unix sockets live in the filesystem, not in a network namespace, so the
gateway (and the reconciler's readiness probe) connect to `<dir>/http.sock` from outside.

For `python:` specs it first builds the spec's virtualenv (shared by the spec's replicas, under an
flock) while a `provisioning` marker tells the backend to report PROVISIONING. It also pumps the
replica's stdout+stderr into a size-capped log with one backup, and when the
commands exit it records the exit status in `exit.json` (atomically) and exits with it. It is the
session and process-group leader of the replica (the backend starts it with a new session), so
one `killpg` reaches it, `bash` and everything the commands started.

This file is run by path with `python -I -S` and imports the standard library only: it must work
with whatever interpreter runs the reconciler, independent of the replica's virtualenv.

Start-up check: its first act is to read `replica.json` and exit unless that still carries the
`--start-token` it was launched with (a stop revokes the token before it looks for processes, so a
supervisor that no scan could see yet never starts a replica that was deleted; local_stop.py).

Start-up handshake: one line on stdout, `ok <relay pid>` or `error: <reason>`, then stdout is
closed; the backend waits for it so namespace and spawn failures surface in `create()`.

Sandbox (`--sandbox ARGV-JSON`, built by `local_sandbox.bwrap_argv`): the commands run as
`<bwrap … setpriv …> bash run.sh`. The supervisor itself stays outside (it binds the socket in the
replica dir, writes the log and exit.json, builds the venv as root and then hands it to the
service's uid). bwrap is started in its own process group and without the replica marks in its own
environment (the marks are set inside with `--setenv`): a stop then signals the sandboxed
processes themselves (they carry the marks), which shut down gracefully, instead of killing bwrap,
which would SIGKILL the whole sandbox at once. `--die-with-parent` still takes the sandbox down
with the supervisor.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import importlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported lazily at run time: it is the slowest part of start-up
    import asyncio

if __package__:  # imported as backends.local.relay (the tests)
    from backends.local.streams import CHUNK, make_handler, make_unix_forwarder
    from backends.local.venv_build import ensure_venv
else:  # run by path with `python -I -S`: its sibling modules are found beside it
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from streams import CHUNK, make_handler, make_unix_forwarder  # type: ignore[import-not-found,no-redef]
    from venv_build import ensure_venv  # type: ignore[import-not-found,no-redef]

CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
IFREQ = "16sh22x"  # struct ifreq: name + flags, padded to 40 bytes
PUMP_DRAIN_SECONDS = 2.0  # after the commands exit, how long to wait for stragglers' output


def enter_network_namespace() -> None:
    """unshare(CLONE_NEWNET) for this process (inherited by its children), then bring `lo` up."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNET) failed: {os.strerror(err)}")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack(IFREQ, b"lo", 0)
        flags = struct.unpack(IFREQ, fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack(IFREQ, b"lo", flags | IFF_UP))


def _private(path: str, flags: int) -> int:
    """`open` opener: a log holds what the replica printed, secrets included, so it is 0600."""
    return os.open(path, flags, 0o600)


class RotatingLog:
    """Append-only log file capped at `max_bytes`, keeping one backup (`<name>.1`). Raw output,
    kept 0600 on disk; tidegate masks the replica's secrets whenever it shows it."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._file = open(path, "ab", opener=_private)  # noqa: SIM115 - lives as long as the relay
        os.chmod(path, 0o600)  # a log an older tidegate created wider
        self._size = self._file.tell()

    def write(self, data: bytes) -> None:
        if self._size and self._size + len(data) > self.max_bytes:
            self._file.close()
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            self._file = open(self.path, "ab", opener=_private)  # noqa: SIM115
            self._size = 0
        self._file.write(data)
        self._file.flush()
        self._size += len(data)

    def close(self) -> None:
        self._file.close()


def write_json_atomic(path: Path, data: dict[str, object]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fork_egress_proxy(socket_path: str, policy_json: str | None = None) -> None:
    """Fork the egress proxy while still in the host's network namespace (see egress.py).

    The child is in the supervisor's process group (one killpg stops both) and also dies with the
    supervisor (PR_SET_PDEATHSIG), so it never outlives its replica.
    """
    parent = os.getpid()
    if os.fork() != 0:
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(0)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1):
            os.dup2(devnull, fd)
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import asyncio

        import egress  # type: ignore[import-not-found]

        policy = egress.EgressPolicy.from_json(policy_json) if policy_json else egress.EgressPolicy()
        asyncio.run(egress.serve(socket_path, policy))
    finally:
        os._exit(0)


async def _pump(stream: asyncio.StreamReader, log: RotatingLog) -> None:
    while data := await stream.read(CHUNK):
        log.write(data)


def _handshake(message: str) -> None:
    with contextlib.suppress(OSError):  # the backend went away; the replica is adopted later
        os.write(1, (message + "\n").encode())
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)


def sibling(name: str) -> Any:
    """A standard-library-only module beside this file (this script runs with `-I -S`, by path)."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    return importlib.import_module(name)


MARKS = ("TIDEGATE_REPLICA", "TIDEGATE_REPLICA_DIR", "TIDEGATE_OWNER")


def marked_pids(replica_dir: str, exclude: int) -> list[int]:
    """Processes whose environment carries this replica's directory mark (a /proc scan)."""
    needle = f"TIDEGATE_REPLICA_DIR={replica_dir}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == exclude:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue
    return found


def spawn(args: argparse.Namespace) -> subprocess.Popen[bytes]:
    if not args.sandbox:
        return subprocess.Popen(
            ["bash", args.script],
            cwd=args.workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
    wrapper = json.loads(args.sandbox)
    if args.venv:
        sandbox = sibling("sandbox")
        wrapper = sandbox.with_venv_base(wrapper, sandbox.recorded_venv_base(Path(args.venv)))
    env = {k: v for k, v in os.environ.items() if k not in MARKS}  # set inside by --setenv
    return subprocess.Popen(
        [*wrapper, "bash", args.script],
        cwd=args.workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        process_group=0,
    )


def start(args: argparse.Namespace) -> tuple[socket.socket, subprocess.Popen[bytes] | None] | None:
    """Bind the socket and spawn the commands (unless a venv must be built first), then handshake.

    Done before asyncio is imported (the slowest part of start-up), so `create()` returns as soon
    as the replica runs; connections arriving meanwhile wait in the listen backlog. A venv is
    built after the handshake, with `--provisioning-file` present meanwhile, so a slow build
    (ensurepip takes seconds) never blocks the caller.
    """
    path = Path(args.socket)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))
        os.chmod(path, 0o660)
        listener.listen(128)
        if args.egress_socket and args.egress_port:
            # Bound before the commands start, so their first download finds the proxy.
            egress = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            egress.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            egress.bind(("127.0.0.1", args.egress_port))
            egress.listen(128)
            args.egress_listener = egress
        if args.venv:
            Path(args.provisioning_file).touch()
            proc = None
        else:
            proc = spawn(args)
    except OSError as e:
        _handshake(f"error: {e}")
        return None
    _handshake(f"ok {os.getpid()}")
    return listener, proc


async def supervise(
    args: argparse.Namespace, listener: socket.socket, proc: subprocess.Popen[bytes] | None
) -> int:
    import asyncio

    loop = asyncio.get_running_loop()
    log = RotatingLog(Path(args.log), args.log_max_bytes)
    server = await asyncio.start_unix_server(make_handler(args.port), sock=listener)
    egress = None
    if getattr(args, "egress_listener", None) is not None:
        egress = await asyncio.start_server(make_unix_forwarder(args.egress_socket), sock=args.egress_listener)
    stopping: list[int] = []

    def forward(signum: int) -> None:
        # A group signal already reached the child; this covers a signal sent to the relay alone.
        stopping.append(signum)
        if proc is not None and args.sandbox:
            # Not bwrap itself (its death SIGKILLs the sandbox): the marked processes inside.
            for pid in marked_pids(os.environ.get("TIDEGATE_REPLICA_DIR", "?"), exclude=os.getpid()):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signum)
        elif proc is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, forward, signum)

    returncode: int | None = None
    if proc is None:
        try:
            built = await loop.run_in_executor(
                None, ensure_venv, Path(args.venv), args.venv_python, args.venv_with_pip, log, args.venv_owner
            )
        finally:
            with contextlib.suppress(FileNotFoundError):
                Path(args.provisioning_file).unlink()
        if stopping:
            returncode = -stopping[0]
        elif not built:
            returncode = 1
        else:
            proc = spawn(args)
    if proc is not None:
        assert proc.stdout is not None
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), proc.stdout)
        pump = asyncio.create_task(_pump(reader, log))
        returncode = await loop.run_in_executor(None, proc.wait)
        try:
            await asyncio.wait_for(pump, PUMP_DRAIN_SECONDS)
        except TimeoutError:
            pump.cancel()  # a background process still holds the pipe open
    assert returncode is not None
    server.close()
    if egress is not None:
        egress.close()
    with contextlib.suppress(FileNotFoundError):
        Path(args.socket).unlink()
    write_json_atomic(Path(args.exit_file), {"returncode": returncode, "finished_at": time.time()})
    log.close()
    return returncode


def still_wanted(meta_path: str, token: str) -> bool:
    """Whether `replica.json` still asks for this supervisor: a stop (delete, or a create that
    replaces it) revokes the token before it looks for the replica's processes (local_stop)."""
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("start_token") == token and meta.get("state") != "deleting"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--probe", action="store_true", help="only check that namespaces work")
    parser.add_argument("--netns", action="store_true", help="run in a new network namespace")
    parser.add_argument("--workdir")
    parser.add_argument("--script")
    parser.add_argument("--port", type=int)
    parser.add_argument("--socket")
    parser.add_argument("--log")
    parser.add_argument("--log-max-bytes", type=int, default=5 * 1024 * 1024)
    parser.add_argument("--exit-file")
    parser.add_argument("--venv", help="virtualenv to build (if missing) before running the commands")
    parser.add_argument("--venv-python", help="interpreter that builds the virtualenv")
    parser.add_argument("--venv-with-pip", action="store_true")
    parser.add_argument("--provisioning-file", help="present while the virtualenv is being built")
    parser.add_argument("--egress-socket", help="unix socket of the egress proxy (namespace mode)")
    parser.add_argument("--egress-port", type=int, help="loopback port of the proxy inside the namespace")
    parser.add_argument("--egress-policy", help="the proxy's destination policy (JSON, local_egress.EgressPolicy)")
    parser.add_argument("--sandbox", help="JSON argv the commands run under (bwrap ... setpriv ...)")
    parser.add_argument("--venv-owner", type=int, help="uid (and gid) the virtualenv is given to")
    parser.add_argument("--meta", help="the replica's replica.json, which must carry --start-token")
    parser.add_argument("--start-token", help="the token of the start that launched this supervisor")
    args = parser.parse_args(argv)
    if args.start_token is not None and not still_wanted(args.meta, args.start_token):
        # Checked before anything is forked: see local_stop's module docstring.
        _handshake("error: the replica was stopped before its supervisor started")
        return 1
    if args.netns and args.egress_socket and not args.probe:
        fork_egress_proxy(args.egress_socket, args.egress_policy)
    if args.netns or args.probe:
        try:
            enter_network_namespace()
        except OSError as e:
            if args.probe:
                print(e, file=sys.stderr)
                return 1
            _handshake(f"error: {e}")
            return 1
    if args.probe:
        return 0
    started = start(args)
    if started is None:
        return 1
    import asyncio

    return asyncio.run(supervise(args, *started))


if __name__ == "__main__":
    sys.exit(main())
