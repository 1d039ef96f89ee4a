"""Keys dstack accepts in a service file that tidegate reads past (with a warning), and the
"did you mean" suggestion for keys nobody knows.

The list follows dstack's ServiceConfiguration (BaseRunConfiguration + ServiceConfigurationParams
+ ProfileParams). A config that works with dstack must validate here; tidegate just says which
fields it does not act on, so nobody is surprised that e.g. `probes` changes nothing.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

# top-level key -> why tidegate ignores it (shown in the warning)
DSTACK_ONLY_TOP: dict[str, str] = {
    "user": "replicas run as the backend's user",
    "privileged": "replicas never run privileged",
    "entrypoint": "use `commands`",
    "working_dir": "commands run in a copy of the repository",
    "home_dir": "deprecated in dstack, no effect",
    "registry_auth": "private registries are not supported yet",
    "nvcc": "no CUDA toolchain images",
    "single_branch": "the reconciler checks out one revision",
    "shell": "commands run with /bin/sh",
    "priority": "there is no run queue",
    "volumes": "volumes are not supported",
    "docker": "Docker-in-Docker is not supported",
    "repos": "the config repository itself is the working copy",
    "files": "the config repository itself is the working copy",
    "setup": "deprecated in dstack; put setup steps in `commands`",
    "gateway": "tidegate runs its own gateway",
    "strip_prefix": "the gateway always strips its own path prefix",
    "https": "TLS is terminated in front of the gateway",
    "availability_zones": "offers are chosen per region",
    "reservation": "capacity reservations are not supported",
    "stop_duration": "replicas are stopped right away",
    "creation_policy": "there are no fleets to reuse",
    "idle_duration": "there are no fleets to keep idle",
    "utilization_policy": "GPU utilization is not watched",
    "termination_policy": "deprecated in dstack",
    "termination_idle_time": "deprecated in dstack",
    "pool_name": "deprecated in dstack",
    "instance_name": "deprecated in dstack",
    "retry_policy": "deprecated in dstack; use `retry`",
    "fleets": "there are no fleets",
    "tags": "resources carry tidegate's own ownership tags",
    "schedule": "services run while they are in git",
}
DSTACK_ONLY_NESTED: dict[tuple[str, ...], dict[str, str]] = {
    ("resources",): {"shm_size": "shared memory size is the backend's default"},
    ("resources", "gpu"): {
        "total_memory": "only memory per GPU is matched",
        "compute_capability": "compute capability is not matched",
    },
}
OTHER_TYPES = ("task", "dev-environment", "fleet", "gateway", "volume")


def did_you_mean(key: str, candidates: Iterable[str]) -> str:
    """`; did you mean 'x'?` or an empty string."""
    close = difflib.get_close_matches(key, sorted(candidates), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""
