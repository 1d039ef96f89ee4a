"""Confining one local replica at start: its files handed to its uid, its sandbox argv, its egress policy.

Why it exists: `sandbox.py` and `egress.py` are standard-library modules the supervisor also
loads by path, so they cannot use psutil or the backend's bookkeeping; the backend's side of the
same decisions (which uid owns which directory, which addresses are "this host", what to do and say
when there is no sandbox) lives here, so `local.py` keeps to the Backend protocol.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import psutil

from backends.base import ReplicaSpec
from backends.local import egress as local_egress
from backends.local import sandbox as local_sandbox
from backends.local.layout import ReplicaPaths
from backends.local.proc import MARK_DIR, MARK_OWNER, MARK_REPLICA

log = logging.getLogger("tidegate.local")


def prepare(
    spec: ReplicaSpec, paths: ReplicaPaths, owner: str, venv: Path | None, problem: str | None
) -> tuple[tuple[str, ...], int | None]:
    """The sandbox prefix and uid for a commands replica, after giving it its files; ((), None) for
    an unsandboxed one (`problem` says why: a trusted service on a machine without bwrap), which is
    said loudly: in the reconciler's log and at the top of the replica's own log."""
    paths.home.mkdir(exist_ok=True)
    tools = local_sandbox.find_tools()
    if problem is not None or tools is None:
        paths.tmp.mkdir(exist_ok=True)
        warning = f"{spec.replica_id} runs WITHOUT the replica sandbox: {problem or 'bwrap not found'}"
        log.warning("%s", warning)
        paths.log.parent.mkdir(exist_ok=True)
        with open(paths.log, "a", encoding="utf-8") as f:
            f.write(f"[tidegate] WARNING: {warning}\n")
        return (), None
    uid = local_sandbox.replica_uid(spec.service)
    local_sandbox.chown_tree(paths.work, uid)
    # bwrap enters it (--chdir) as root without CAP_DAC_*; a checkout's mkdtemp mode (0700) would
    # shut it out. Its contents keep their modes; only the replica's own mounts show it.
    paths.work.chmod(0o755)
    # Only the folder: what is inside was written by this uid (a root walk over a tree a replica
    # wrote is how symlink races start).
    os.chown(paths.home, uid, uid)
    plan = local_sandbox.SandboxPlan(
        tools=tools,
        uid=uid,
        work=paths.work,
        home=paths.home,
        script=paths.script,
        marks=((MARK_REPLICA, spec.replica_id), (MARK_DIR, str(paths.dir)), (MARK_OWNER, owner)),
        venv=venv,
        devices=local_sandbox.gpu_devices() if spec.requirements.gpu is not None else (),
    )
    return tuple(local_sandbox.bwrap_argv(plan, local_sandbox.root_layout())), uid


def host_addresses() -> tuple[local_egress.Rule, ...]:
    """Every address of this machine's interfaces: denied to replicas (the gateway listens on one)."""
    rules = []
    with contextlib.suppress(OSError):
        for addrs in psutil.net_if_addrs().values():
            for a in addrs:
                if a.family.name in ("AF_INET", "AF_INET6"):
                    with contextlib.suppress(ValueError):
                        rules.append(local_egress.parse_rule(a.address.split("%", 1)[0]))
    return tuple(rules)


def egress_policy(allow: Sequence[local_egress.Rule]) -> local_egress.EgressPolicy:
    """Public internet, never this host's own addresses, plus `allow` (the operator's rules; the
    backend passes them for trusted services only)."""
    return local_egress.EgressPolicy(allow=tuple(allow), deny=host_addresses())
