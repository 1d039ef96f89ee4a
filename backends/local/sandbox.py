"""The sandbox a local replica's commands run in: bubblewrap (`bwrap`) plus a drop to a non-root uid.

Why it exists: a replica's code is not trusted (a PR preview above all), and the machine it runs on
holds the reconciler's state — API token hashes, the journal, the signal folder that wakes the
reconciler, other replicas' work dirs and sockets. The sandbox is a list of what a replica may
see, written the way systemd's `ProtectSystem=strict` + `PrivateTmp=` + `DynamicUser=` and
Flatpak (bubblewrap's main user) think about it; everything not listed is absent:

- read-only: `/usr` (and the merged-/usr symlinks `/bin`, `/lib`, ...), `/etc`, and the prefix of
  the interpreter a `python:` spec's virtualenv points into (a pyenv build under /root, say; added
  by the supervisor with `with_venv_base` once the venv is built);
- writable: the replica's own work dir, its own HOME (`<replica dir>/home`), its virtualenv, and a
  private tmpfs on `/tmp`; the run script is bound read-only at its own path;
- fresh: `/proc` of its own PID namespace (no other process of the machine is visible, so no
  other replica's `/proc/<pid>/environ` either), a minimal `/dev` (null, zero, random, tty, shm,
  ...), and `/dev/nvidia*` only for a service that asked for a GPU;
- absent: the state directory and everything else of the host (`/root`, `/home`, `/run`, `/var`,
  `/sys`, other replicas).

Namespaces: mount, PID, IPC, UTS and cgroup from bwrap; the network namespace is the one the
supervisor already created (with only `lo`, plus the egress proxy's port), so bwrap shares it
rather than making a second one. Identity: bwrap runs as root (it needs to mount), then `setpriv`
switches to the service's own uid/gid (a stable number per service, never 0, with no
supplementary groups, every capability and the bounding set dropped) before `bash` runs. A user
namespace is deliberately *not* used: inside one, bwrap's `--uid` maps back to host uid 0, and
files bound in would still be owned-by-root to the kernel; a real unprivileged host uid is not.
bwrap sets `no_new_privs`, so set-uid binaries under `/usr` grant nothing. `--new-session` is not
used: the supervisor already leads a session without a controlling terminal (so there is no tty
to inject into), and a second session leader per replica would look like a second replica to the
/proc scans that adopt replicas after a restart.

The argv is built by a pure function (`bwrap_argv`); probing for bwrap is the only I/O here.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
UID_BASE = 3_000_000  # far above login users, systemd's dynamic users and the usual subuid ranges
UID_SPAN = 1_000_000
INSTALL_HINT = (
    "the replica sandbox needs bubblewrap: install the Debian/Ubuntu package `bubblewrap` "
    "(apt-get install -y bubblewrap) and run tidegate as root"
)
# The top-level names a merged-/usr system links into /usr; on older layouts they are directories.
_ROOT_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
PROBE_TIMEOUT = 10.0


class SandboxMode(StrEnum):
    AUTO = "auto"  # sandbox when bwrap works here; else trusted services run unsandboxed, loudly
    REQUIRED = "required"  # no sandbox, no replica
    OFF = "off"  # never (benchmarks comparing the cost; tests of the unsandboxed path)


@dataclass(frozen=True)
class SandboxTools:
    bwrap: str
    setpriv: str


@dataclass(frozen=True)
class SandboxPlan:
    """Everything `bwrap_argv` needs for one replica."""

    tools: SandboxTools
    uid: int
    work: Path
    home: Path
    script: Path
    marks: tuple[tuple[str, str], ...]  # the replica's /proc marks, set inside only (see spawn)
    venv: Path | None = None
    devices: tuple[str, ...] = ()  # /dev/nvidia* for a GPU service


def replica_uid(service: str) -> int:
    """The uid (and gid) a service's replicas run as: stable, per service, never 0."""
    digest = int.from_bytes(hashlib.sha256(service.encode()).digest()[:4], "big")
    return UID_BASE + digest % UID_SPAN


def root_layout(root: Path = Path("/")) -> list[str]:
    """bwrap arguments recreating `/bin`, `/lib`, ... as on the host: symlinks stay symlinks."""
    args: list[str] = []
    for name in _ROOT_LINKS:
        path = root / name
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), f"/{name}"]
        elif path.is_dir():
            args += ["--ro-bind", str(path), f"/{name}"]
    return args


def bwrap_argv(plan: SandboxPlan, layout: Sequence[str]) -> list[str]:
    """The command prefix that runs what follows it in the sandbox as the service's uid."""
    uid = str(plan.uid)
    argv = [
        plan.tools.bwrap,
        "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
        "--die-with-parent",
        "--hostname", "replica",
        "--ro-bind", "/usr", "/usr",
        *layout,
        "--ro-bind", "/etc", "/etc",
        "--proc", "/proc",
        "--dev", "/dev",
        "--perms", "1777", "--tmpfs", "/tmp",
        "--perms", "1777", "--tmpfs", "/var/tmp",
    ]  # fmt: skip
    binds = [plan.work, plan.home, *([plan.venv] if plan.venv else []), plan.script]
    # bwrap would create the missing parents of a bind as 0700 root: unreadable to the replica.
    for parent in parents_to_make(binds):
        argv += ["--dir", str(parent)]
    for device in plan.devices:
        argv += ["--dev-bind", device, device]
    # After /tmp's tmpfs: a replica root under /tmp (tests, short socket paths) is bound on top.
    argv += ["--bind", str(plan.work), str(plan.work), "--bind", str(plan.home), str(plan.home)]
    if plan.venv is not None:
        argv += ["--bind", str(plan.venv), str(plan.venv)]
    argv += ["--ro-bind", str(plan.script), str(plan.script), "--chdir", str(plan.work)]
    for name, value in plan.marks:
        argv += ["--setenv", name, value]
    # setpriv needs these three to switch uid and clear the bounding set; it drops them itself.
    argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
    argv += [
        "--", plan.tools.setpriv,
        "--reuid", uid, "--regid", uid, "--clear-groups",
        "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs",
    ]  # fmt: skip
    return argv


_MOUNTED = (Path("/"), Path("/usr"), Path("/etc"), Path("/proc"), Path("/dev"), Path("/tmp"), Path("/var/tmp"))


def parents_to_make(paths: Sequence[Path]) -> list[Path]:
    """Every ancestor of `paths` that the sandbox does not already have, outermost first."""
    out: list[Path] = []
    for path in paths:
        for parent in reversed(path.parents):
            if parent in _MOUNTED or any(parent.is_relative_to(m) for m in _MOUNTED[1:3]):
                continue
            if parent not in out and parent not in paths:
                out.append(parent)
    return sorted(out, key=lambda p: len(p.parts))


def gpu_devices(pattern: str = "/dev/nvidia*") -> tuple[str, ...]:
    """The NVIDIA device nodes of this machine (none on a machine without the driver)."""
    return tuple(sorted(glob.glob(pattern)))


def find_tools() -> SandboxTools | None:
    bwrap, setpriv = shutil.which("bwrap"), shutil.which("setpriv")
    if bwrap is None or setpriv is None:
        return None
    return SandboxTools(bwrap=bwrap, setpriv=setpriv)


def probe(tools: SandboxTools | None) -> str | None:
    """None when a replica sandbox can be made here, else why not (shown in `ps` and the plan)."""
    if tools is None:
        missing = "bwrap" if shutil.which("bwrap") is None else "setpriv (util-linux)"
        return f"{missing} not found; {INSTALL_HINT}"
    if os.geteuid() != 0:
        return f"tidegate is not running as root; {INSTALL_HINT}"
    plan_argv = [
        tools.bwrap, "--unshare-pid", "--ro-bind", "/usr", "/usr", *root_layout(),
        "--proc", "/proc", "--dev", "/dev", "--cap-drop", "ALL", "--cap-add", "CAP_SETUID",
        "--cap-add", "CAP_SETGID", "--", tools.setpriv, "--reuid", str(UID_BASE), "--regid",
        str(UID_BASE), "--clear-groups", "true",
    ]  # fmt: skip
    try:
        proc = subprocess.run(plan_argv, capture_output=True, text=True, timeout=PROBE_TIMEOUT)
    except (OSError, subprocess.SubprocessError) as e:
        return f"cannot run bwrap: {e}"
    if proc.returncode != 0:
        return f"bwrap cannot create a sandbox here ({proc.stderr.strip() or f'exit {proc.returncode}'})"
    return None


def venv_base_prefix(venv: Path) -> Path | None:
    """The installation a virtualenv's python links into (`home` in its pyvenv.cfg, minus /bin)."""
    try:
        text = (venv / "pyvenv.cfg").read_text(encoding="utf-8")
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "home" and value.strip():
            home = Path(value.strip())
            return home.parent if home.name == "bin" else home
    return None


def venv_base_file(venv: Path) -> Path:
    """Where the supervisor records a venv's base prefix when it builds it: beside the venv, outside
    it. The venv itself is the replica's to write, so its pyvenv.cfg is never read again after that
    (a replica rewriting `home` would otherwise choose what of the host gets bound in next time)."""
    return venv.parent / f".{venv.name}.base"


def recorded_venv_base(venv: Path) -> Path | None:
    try:
        text = venv_base_file(venv).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return Path(text) if text else None


def with_venv_base(argv: Sequence[str], prefix: Path | None) -> list[str]:
    """`argv` (from `bwrap_argv`) with a venv's base interpreter prefix (`recorded_venv_base`) bound
    read-only, when that lives outside /usr (a pyenv build under /root, say)."""
    if prefix is None or prefix.is_relative_to("/usr") or "--chdir" not in argv:
        return list(argv)
    extra: list[str] = []
    for parent in parents_to_make([prefix]):
        extra += ["--dir", str(parent)]
    extra += ["--ro-bind", str(prefix), str(prefix)]
    at = list(argv).index("--chdir")
    return [*argv[:at], *extra, *argv[at:]]


def chown_tree(path: Path, uid: int) -> None:
    """Give a tree (a freshly copied work dir, a replica's HOME) to the service's uid."""
    os.chown(path, uid, uid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, uid, follow_symlinks=False)
