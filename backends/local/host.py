"""What this machine can run for the local backend: interpreters, GPUs, engines, namespaces.

Why it exists: the local backend has to answer "can this spec run here, and if not, why?" before
it starts anything (the reconciler shows the reason in the plan), and the answers come from the
host: which `pythonX.Y` interpreters really work (pyenv shims that exist on PATH but fail are
skipped), whether a Docker/Podman engine answers, what `nvidia-smi` reports, whether network
namespaces can be created. Parsing and matching are pure functions (`parse_nvidia_smi`,
`match_offer`); the probes that run commands are thin and cached by the backend.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from backends.base import GpuInfo, Offer, PermanentError, Requirements

PYTHON_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.\d+)?$")
PROBE_TIMEOUT = 10.0


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gb: float


@dataclass(frozen=True)
class Machine:
    cpus: int
    memory_gb: float
    gpus: tuple[Gpu, ...] = ()


# ---- pure ------------------------------------------------------------------------------------


def python_minor(version: str) -> str:
    """'3.11' or '3.11.7' -> '3.11'; anything else is a PermanentError."""
    m = PYTHON_VERSION.match(version.strip())
    if m is None:
        raise PermanentError(f"python: {version!r} is not a version like '3.11'")
    return f"{m.group(1)}.{m.group(2)}"


def parse_nvidia_smi(text: str) -> tuple[Gpu, ...]:
    """Rows of `nvidia-smi --query-gpu=name,memory.total --format=csv,noheader` -> GPUs."""
    gpus: list[Gpu] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        name, _, memory = line.rpartition(",")
        m = re.match(r"\s*([\d.]+)\s*(MiB|GiB|MB|GB)?", memory)
        if not name.strip() or m is None:
            continue
        amount = float(m.group(1))
        gb = amount / 1024 if (m.group(2) or "MiB") in ("MiB", "MB") else amount
        gpus.append(Gpu(name=name.strip(), memory_gb=round(gb, 1)))
    return tuple(gpus)


def _gpu_matches(gpu: Gpu, names: Sequence[str]) -> bool:
    if not names:
        return True
    label = gpu.name.lower().replace(" ", "")
    return any(n.lower().replace(" ", "") in label for n in names)


def match_offer(req: Requirements, machine: Machine) -> Offer | None:
    """The one local offer if `req` fits this machine, else None.

    Only lower bounds of cpus and memory are checked (the replica shares the whole machine), and
    disk is not checked: replicas live in the state directory, sized by the user. The local
    backend has no spot capacity, regions or instance types other than "local".
    """
    if req.backends and "local" not in req.backends:
        return None
    if req.regions and "local" not in req.regions:
        return None
    if req.instance_types and "local" not in req.instance_types:
        return None
    if req.spot_policy == "spot":
        return None
    if req.max_price is not None and req.max_price < 0:
        return None
    if req.cpus.min is not None and machine.cpus < req.cpus.min:
        return None
    if req.memory_gb.min is not None and machine.memory_gb < req.memory_gb.min:
        return None
    gpu_info: GpuInfo | None = None
    if req.gpu is not None:
        wanted_min = req.gpu.count.min if req.gpu.count.min is not None else 1
        if req.gpu.vendor not in (None, "nvidia") and wanted_min > 0:
            return None
        fitting = [
            g
            for g in machine.gpus
            if _gpu_matches(g, req.gpu.names) and req.gpu.memory_gb.contains(g.memory_gb)
        ]
        if len(fitting) < wanted_min:
            return None
        count = len(fitting) if req.gpu.count.max is None else min(len(fitting), int(req.gpu.count.max))
        if count > 0:
            gpu_info = GpuInfo(name=fitting[0].name, memory_gb=fitting[0].memory_gb, count=count)
    return Offer(
        backend="local",
        region="local",
        instance_type="local",
        cpus=machine.cpus,
        memory_gb=machine.memory_gb,
        gpu=gpu_info,
        spot=False,
        price=0.0,
    )


# ---- probes (I/O) ------------------------------------------------------------------------------


def probe_machine() -> Machine:
    gpus: tuple[Gpu, ...] = ()
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=name,memory.total", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=PROBE_TIMEOUT,
                check=True,
            ).stdout
            gpus = parse_nvidia_smi(out)
        except (OSError, subprocess.SubprocessError):
            gpus = ()
    return Machine(
        cpus=os.cpu_count() or 1,
        memory_gb=round(psutil.virtual_memory().total / 1024**3, 1),
        gpus=gpus,
    )


def probe_engine() -> str | None:
    """The path of `docker` or `podman` when that engine answers `info`, else None."""
    for engine in ("docker", "podman"):
        exe = shutil.which(engine)
        if exe is None:
            continue
        try:
            subprocess.run([exe, "info"], capture_output=True, timeout=PROBE_TIMEOUT, check=True)
        except (OSError, subprocess.SubprocessError):
            continue
        return exe
    return None


def probe_namespaces(relay: Path) -> str | None:
    """None when a network namespace can be created here, else the reason."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux (this is {sys.platform})"
    try:
        proc = subprocess.run(
            [sys.executable, "-I", "-S", str(relay), "--probe"],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT,
        )
    except (OSError, subprocess.SubprocessError) as e:
        return f"cannot probe network namespaces: {e}"
    if proc.returncode != 0:
        return f"cannot create a network namespace ({proc.stderr.strip() or 'unknown error'}); run as root"
    return None


def _candidates(minor: str) -> Iterator[str]:
    exe = shutil.which(f"python{minor}")
    if exe is not None:
        yield exe
    if f"{sys.version_info.major}.{sys.version_info.minor}" == minor:
        yield sys.executable
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    for path in sorted((pyenv_root / "versions").glob(f"{minor}.*/bin/python{minor}"), reverse=True):
        yield str(path)


def find_interpreter(version: str) -> str | None:
    """A working interpreter for `version` ('3.11'), verified by running it."""
    minor = python_minor(version)
    for candidate in _candidates(minor):
        try:
            out = subprocess.run(
                [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=PROBE_TIMEOUT,
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode == 0 and out.stdout.strip() == minor:
            return candidate
    return None


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive flock, released by the kernel if this process dies. Housekeeping may remove an
    unheld lock file (local_gc): if the path no longer names the file locked, lock it again."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        with open(path, "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                same = os.fstat(f.fileno()).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
                continue
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
            return


def lock_is_held(path: Path) -> bool:
    if not path.exists():
        return False
    with open(path, "a+b") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return False
