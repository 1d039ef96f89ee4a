"""kill -9 a real `tidegate up` in the middle of apply, start it again, and count processes.

Each case pushes 2 services x 2 replicas to a bare remote, runs `tidegate up` with
`TIDEGATE_FAULT=<point>:<n>` (the engine SIGKILLs its own process the n-th time it reaches the
point), then restarts it without the fault and waits for convergence. Then /proc is scanned for the
local backend's replica mark: exactly one process tree per replica the state knows, no marked
process outside them (nothing leaked), and every replica process that was alive at the crash is
still the same process (adopted, not started twice).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.helpers import Remote, Tidegate, replica_trees, service_yaml, wait_for

pytestmark = pytest.mark.slow

SERVICES = {"web-a": 2, "web-b": 2}


def push_services(remote: Remote, greeting: str = "v1") -> str:
    return remote.push(
        {f"{name}.dstack.yml": service_yaml(name, replicas=n, greeting=greeting) for name, n in SERVICES.items()},
        message=f"services {greeting}",
    )


def converged(tg: Tidegate, revision: str) -> dict[str, dict[str, Any]] | None:
    ps = tg.ps()
    for name, count in SERVICES.items():
        s = ps.get(name)
        if s is None or s["revision"] != revision or s["ready"] != count:
            return None
        reps = s["replicas"]
        if len(reps) != count or not all(r["phase"] == "ready" and r["current"] for r in reps):
            return None
    return ps


def assert_one_tree_per_replica(tg: Tidegate, ps: dict[str, dict[str, Any]]) -> dict[str, list[int]]:
    known = {r["id"] for s in ps.values() for r in s["replicas"]}
    trees = replica_trees(tg.state)
    assert set(trees) == known, f"leaked or missing replica processes: trees={trees} state={sorted(known)}"
    assert all(len(roots) == 1 for roots in trees.values()), f"a replica runs twice: {trees}"
    return trees


def crash_then_converge(tg: Tidegate, remote: Remote, revision: str, fault: str) -> None:
    env = {"TIDEGATE_FAULT": fault}
    if fault.startswith("open_state_write"):
        # Hold the second create that starts (its intent open) for 8 s: the other service's worker
        # finishes and the state is written meanwhile. Without it the case depends on timing.
        env["TIDEGATE_FAULT_STALL"] = "after_intent:2:8"
    crashed = tg.up(remote.url, env=env)
    code = crashed.wait(120)
    assert code == -9, f"the fault {fault} was not reached (exit {code}):\n{tg.log_text()}"
    at_crash = replica_trees(tg.state)

    tg.up(remote.url)
    ps = wait_for(lambda: converged(tg, revision), timeout=90, what=f"convergence after {fault}")
    trees = assert_one_tree_per_replica(tg, ps)
    for rid, roots in at_crash.items():
        if rid in trees:  # alive at the crash and still wanted: adopted, never restarted
            assert trees[rid] == roots, f"{rid} was started again after the crash ({roots} -> {trees[rid]})"


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param("after_intent:1", id="after-first-intent"),
        pytest.param("after_create:2", id="after-second-create"),
        pytest.param("after_outcome:3", id="after-third-outcome"),
        pytest.param("after_state_write:1", id="after-state-write"),
        # Concurrent work (`up` applies each service on its own worker): killed with both
        # services' creates journaled and in flight, and while state.json is written with another
        # worker's create still running (the state must not claim that intent as reflected).
        pytest.param("after_intent:2", id="two-services-creates-in-flight"),
        pytest.param("open_state_write:1", id="state-write-while-a-create-runs"),
    ],
)
def test_kill_during_first_deploy(remote: Remote, tidegate: Tidegate, fault: str) -> None:
    revision = push_services(remote)
    crash_then_converge(tidegate, remote, revision, fault)


# Kept to the points that matter most so the slow suite stays short: after_routes adds nothing
# over after_state_write, and a roll's create is the same code path as a first deploy's.
@pytest.mark.parametrize("fault", [pytest.param("after_delete:1", id="roll-after-delete")])
def test_kill_during_rolling_update(remote: Remote, tidegate: Tidegate, fault: str) -> None:
    first = push_services(remote, "v1")
    tidegate.up(remote.url)
    wait_for(lambda: converged(tidegate, first), timeout=90, what="first deploy")
    tidegate.stop_all()  # replicas keep running; the next up adopts them

    second = push_services(remote, "v2")
    crash_then_converge(tidegate, remote, second, fault)
    for name in SERVICES:
        for _ in range(4):  # every replica now answers with the new env
            assert tidegate.get(name).json()["greeting"] == "v2"


@pytest.mark.parametrize(
    "fault",
    [
        # The unroute pass wrote the state (unrouted_at) but died before publishing the routes;
        # then: the deletion's replica delete journaled but not recorded.
        pytest.param("after_state_write:1", id="delete-after-unroute-state-write"),
        pytest.param("after_delete:1", id="delete-after-replica-delete"),
    ],
)
def test_kill_during_teardown(remote: Remote, tidegate: Tidegate, fault: str) -> None:
    """Deleting a service unroutes it first (its replicas drain), then stops them: a crash at
    either step ends, after a restart, with the service gone and nothing leaked or doubled."""
    first = push_services(remote, "v1")
    tidegate.up(remote.url)
    wait_for(lambda: converged(tidegate, first), timeout=90, what="first deploy")
    tidegate.stop_all()
    remote.push({"web-b.dstack.yml": None}, "remove web-b")

    crashed = tidegate.up(remote.url, env={"TIDEGATE_FAULT": fault})
    assert crashed.wait(120) == -9, f"the fault {fault} was not reached:\n{tidegate.log_text()}"
    tidegate.up(remote.url)

    def gone() -> dict[str, dict[str, Any]] | None:
        ps = tidegate.ps()
        a = ps.get("web-a")
        return ps if "web-b" not in ps and a is not None and a["ready"] == 2 else None

    ps = wait_for(gone, timeout=90, what=f"web-b deleted after {fault}")
    trees = assert_one_tree_per_replica(tidegate, ps)
    assert not any(rid.startswith("web-b-") for rid in trees)
    assert tidegate.get("web-a").status_code == 200
    assert tidegate.get("web-b").status_code == 404
