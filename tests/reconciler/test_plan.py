"""plan(desired, actual, now): table tests over a pure function (no I/O, time injected)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.engine.naming import replica_id
from reconciler.engine.plan import (
    Action,
    Desired,
    FieldChange,
    Plan,
    Step,
    Target,
    _service_steps,
    _steady,
    plan,
)
from reconciler.engine.reconcile import PlanResult
from reconciler.render.plan_output import plan_json, render_plan
from reconciler.state.records import ReplicaPhase, ReplicaRecord, ServiceRecord

OLD = "a" * 64
NEW = "b" * 64
NOW = 1000.0
R, P, F, D = ReplicaPhase.READY, ReplicaPhase.PROVISIONING, ReplicaPhase.FAILED, ReplicaPhase.DRAINING


def rep(ordinal: int, phase: ReplicaPhase = R, spec: str = OLD, **kw: object) -> ReplicaRecord:
    return ReplicaRecord(
        id=replica_id("web", spec, ordinal),
        service="web",
        spec_hash=spec,
        ordinal=ordinal,
        backend="local",
        phase=phase,
        **kw,  # type: ignore[arg-type]
    )


def svc(*replicas: ReplicaRecord, spec: str = OLD) -> dict[str, ServiceRecord]:
    return {"web": ServiceRecord(name="web", spec_hash=spec, replicas=list(replicas))}


def gone(*replicas: ReplicaRecord, unrouted_at: float | None = None) -> dict[str, ServiceRecord]:
    """A service whose config was removed (`unrouted_at`: when it left the routes)."""
    return {"web": ServiceRecord(name="web", spec_hash=OLD, replicas=list(replicas), unrouted_at=unrouted_at)}


URL = "http://127.0.0.1:9"


def want(count: int, spec: str = OLD, **kw: object) -> Desired:
    return Desired({"web": Target("web", spec, count, **kw)})  # type: ignore[arg-type]


def short(p: Plan) -> list[str]:
    """Steps as compact strings: action:ordinal(hash-letter)[>replaced ordinal]."""
    out = []
    for s in p.steps:
        if s.replica is None:
            out.append(f"{s.action}:{s.service}")
            continue
        letter = s.replica.split("-")[1][0]
        text = f"{s.action}:{s.ordinal}{letter}"
        if s.replaces:
            text += ">" + s.replaces.split("-")[2] + s.replaces.split("-")[1][0]
        out.append(text)
    return out


A, ADD, REP, RST, DRN, RM = (
    Action.CREATE_SERVICE,
    Action.ADD_REPLICA,
    Action.REPLACE_REPLICA,
    Action.RESTART_REPLICA,
    Action.DRAIN_REPLICA,
    Action.REMOVE_REPLICA,
)

CASES = [
    pytest.param(want(2), {}, ["create_service:web", "add_replica:0a", "add_replica:1a"], id="new-service"),
    pytest.param(want(0), {}, ["create_service:web"], id="new-service-at-zero-keeps-route"),
    pytest.param(want(2), svc(rep(0), rep(1)), [], id="converged-nothing-to-do"),
    pytest.param(want(2), svc(rep(0), rep(1, P)), [], id="provisioning-counts-no-duplicate"),
    pytest.param(want(3), svc(rep(0)), ["add_replica:1a", "add_replica:2a"], id="scale-up-adds-all-at-once"),
    pytest.param(want(1), svc(rep(0), rep(1)), ["drain_replica:1a"], id="scale-down-drains-highest-ordinal"),
    pytest.param(
        want(1),
        svc(rep(0, in_flight=5), rep(1, in_flight=1)),
        ["drain_replica:1a"],
        id="scale-down-fewest-in-flight",
    ),
    pytest.param(
        want(1), svc(rep(0), rep(1, P)), ["remove_replica:1a"], id="scale-down-removes-not-ready-first"
    ),
    pytest.param(
        want(1),
        svc(rep(0, F, next_attempt_at=NOW + 50), rep(1)),
        ["remove_replica:0a"],
        id="scale-down-failed-first",
    ),
    pytest.param(
        want(2, spec=NEW), svc(rep(0), rep(1)), ["replace_replica:0b>0a"], id="rolling-starts-one-surge"
    ),
    pytest.param(
        want(2, spec=NEW), svc(rep(0), rep(1), rep(0, P, NEW)), [], id="rolling-waits-for-surge-to-be-ready"
    ),
    pytest.param(
        want(2, spec=NEW),
        svc(rep(0), rep(1), rep(0, R, NEW)),
        ["replace_replica:1b>1a", "drain_replica:0a"],
        id="rolling-ready-surge-retires-one-starts-next",
    ),
    pytest.param(
        want(2, spec=NEW),
        svc(rep(1), rep(0, R, NEW), rep(1, R, NEW)),
        ["drain_replica:1a"],
        id="rolling-last-old-drained",
    ),
    pytest.param(
        want(2, spec=NEW),
        svc(rep(0, P), rep(1)),
        ["remove_replica:0a", "add_replica:0b"],
        id="rolling-outdated-not-ready-removed-at-once-capacity-added",
    ),
    pytest.param(
        want(1, spec=NEW),
        svc(rep(0), rep(0, F, NEW, next_attempt_at=NOW + 10)),
        [],
        id="rolling-new-failing-keeps-old-serving",
    ),
    pytest.param(want(1), svc(rep(0, F, next_attempt_at=NOW + 10)), [], id="failed-waits-for-backoff"),
    pytest.param(
        want(1), svc(rep(0, F, next_attempt_at=NOW)), ["restart_replica:0a"], id="failed-restarts-when-due"
    ),
    pytest.param(
        want(1), svc(rep(0), rep(1, D, draining_since=NOW - 1, in_flight=0)), [], id="drain-waits-minimum"
    ),
    pytest.param(
        want(1),
        svc(rep(0), rep(1, D, draining_since=NOW - 3, in_flight=0)),
        ["remove_replica:1a"],
        id="drain-done-when-idle",
    ),
    pytest.param(
        want(1),
        svc(rep(0), rep(1, D, draining_since=NOW - 3, in_flight=2)),
        [],
        id="drain-waits-for-in-flight",
    ),
    pytest.param(
        want(1),
        svc(rep(0), rep(1, D, draining_since=NOW - 31, in_flight=2)),
        ["remove_replica:1a"],
        id="drain-grace-expired",
    ),
    pytest.param(
        want(2), svc(rep(1), rep(2, D, draining_since=NOW)), ["add_replica:0a"], id="add-takes-free-ordinal"
    ),
    pytest.param(
        want(0), svc(rep(0), rep(1, P)), ["remove_replica:1a", "drain_replica:0a"], id="scale-to-zero"
    ),
    pytest.param(want(2, keep=True, keep_reason="bad file"), svc(rep(0, F)), [], id="kept-service-untouched"),
    pytest.param(Desired({}), svc(rep(0)), ["delete_service:web"], id="removed-file-deletes"),
    pytest.param(Desired({}, prune=False), svc(rep(0)), [], id="no-prune-keeps"),
    # Teardown drains: out of the routes first, replicas stopped once nothing is in flight.
    pytest.param(Desired({}), gone(rep(0, address=URL), rep(1, P)), ["unroute_service:web"], id="removed-serving-unroutes-first"),
    pytest.param(Desired({}), gone(rep(0, D, address=URL, in_flight=0), unrouted_at=NOW - 1), [], id="unrouted-waits-drain-min"),
    pytest.param(Desired({}), gone(rep(0, D, address=URL, in_flight=2), unrouted_at=NOW - 10), [], id="unrouted-waits-in-flight"),
    pytest.param(Desired({}), gone(rep(0, D, address=URL, in_flight=0), unrouted_at=NOW - 2), ["delete_service:web"], id="unrouted-drained-deletes"),
    pytest.param(Desired({}), gone(rep(0, D, address=URL, in_flight=2), unrouted_at=NOW - 30), ["delete_service:web"], id="unrouted-grace-ends"),
    pytest.param(Desired({}, drain_grace=60), gone(rep(0, D, address=URL, in_flight=2), unrouted_at=NOW - 30), [], id="unrouted-own-grace"),
]


@pytest.mark.parametrize(("desired", "actual", "expected"), CASES)
def test_plan_table(desired: Desired, actual: dict[str, ServiceRecord], expected: list[str]) -> None:
    assert short(plan(desired, actual, NOW)) == expected


def test_plan_is_deterministic_and_ordered_by_service() -> None:
    desired = Desired({n: Target(n, NEW, 1) for n in ("zeta", "alpha", "mid")})
    first = plan(desired, {}, NOW)
    assert [s.service for s in first.steps] == ["alpha", "alpha", "mid", "mid", "zeta", "zeta"]
    assert plan(desired, {}, NOW) == first


def test_plan_reports_changed_fields() -> None:
    actual = svc(rep(0))
    actual["web"].spec_summary = {"image": "a:1", "port": "8000"}
    p = plan(Desired({"web": Target("web", NEW, 1, summary={"image": "a:2", "port": "8000"})}), actual, NOW)
    assert [(c.field, c.old, c.new) for c in p.changes["web"]] == [("image", "a:1", "a:2")]


def test_a_new_services_changes_read_as_a_dict_of_every_summary_field() -> None:
    """A new service's change list is made when read (not by `plan`): every way of reading
    `changes` gives what the dict of made lists gives, in the plan's order, the same list each time."""
    actual = svc(rep(0))
    actual["web"].spec_summary = {"image": "a:1", "port": "8000"}
    summary = {"port": "8000", "image": "a:2", "auth": "true"}
    desired = Desired(
        {
            "web": Target("web", NEW, 1, summary={"image": "a:2", "port": "8000"}),
            "api": Target("api", NEW, 2, summary=summary),
            "zed": Target("zed", NEW, 1, summary={"port": "9000"}),
        }
    )
    p = plan(desired, actual, NOW)
    expected = {
        "api": tuple(FieldChange(k, None, summary[k]) for k in ("auth", "image", "port")),
        "web": (FieldChange("image", "a:1", "a:2"),),
        "zed": (FieldChange("port", None, "9000"),),
    }
    assert list(p.changes) == ["api", "web", "zed"] and len(p.changes) == 3 and "api" in p.changes
    assert p.changes.get("nope") is None and "nope" not in p.changes
    assert p.changes == expected and dict(p.changes) == expected and expected == p.changes
    assert p.changes["api"] is p.changes["api"]
    assert repr(p.changes) == repr(expected)
    assert p == plan(desired, actual, NOW)


def test_rolling_update_converges_without_losing_capacity() -> None:
    """Simulate passes: a new replica is ready one pass after it starts; drains finish after 3 s."""
    actual = svc(rep(0), rep(1), rep(2))
    desired = want(3, spec=NEW)
    now = NOW
    for _ in range(30):
        rec = actual["web"]
        for r in rec.replicas:  # what became ready since the last pass
            if r.phase is P:
                r.phase = R
        p = plan(desired, actual, now)
        if p.empty:
            break
        for s in p.steps:
            if s.action in (ADD, REP):
                assert s.ordinal is not None
                rec.replicas.append(rep(s.ordinal, P, NEW))
            elif s.action is DRN:
                r = next(x for x in rec.replicas if x.id == s.replica)
                r.phase, r.draining_since = D, now
            elif s.action is RM:
                rec.replicas = [x for x in rec.replicas if x.id != s.replica]
        serving = sum(1 for r in rec.replicas if r.phase is R)
        assert serving >= 3, "a rolling update never drops below the desired ready count"
        surge = sum(1 for r in rec.replicas if r.spec_hash == NEW and r.phase is P)
        assert surge <= 1
        now += 3
    assert sorted(r.id for r in actual["web"].replicas) == sorted(replica_id("web", NEW, i) for i in range(3))


def test_render_text_and_json() -> None:
    """The CLI's renderings (reconciler.render.plan_output) of a plan with a create, an update and a delete."""
    actual = svc(rep(0), rep(1))
    actual["web"].spec_summary = {"commands": "serve --old"}
    actual["gone"] = ServiceRecord(name="gone", spec_hash=OLD)
    desired = Desired(
        {
            "web": Target("web", NEW, 1, summary={"commands": "serve --new"}),
            "api": Target("api", NEW, 2, summary={"port": "8000"}),
        }
    )
    p = plan(desired, actual, NOW)
    text = render_plan(PlanResult(p, None, "c0ffee"))
    assert "  + api: create (2 x add replica)" in text
    assert "      port: (none) -> 8000" in text
    assert "  ~ web: update" in text
    assert "      commands: serve --old -> serve --new" in text
    assert "  - gone: delete" in text
    assert "Plan: 1 to create, 1 to change, 1 to delete." in text
    doc = plan_json(PlanResult(p, None, "c0ffee"))
    assert doc["changes"] is True and doc["exit_code"] == 2
    assert {n: s["action"] for n, s in doc["services"].items()} == {"api": "create", "web": "update", "gone": "delete"}
    assert json.loads(json.dumps(doc))["services"]["web"]["fields"] == [
        {"field": "commands", "old": "serve --old", "new": "serve --new"}
    ]
    assert render_plan(PlanResult(Plan(), None, None)).endswith("No changes. The deployed services match the configuration.")


@pytest.mark.parametrize("count", [-1, 0, 1, 3])
def test_a_new_service_gets_the_steps_of_a_service_without_replicas(count: int) -> None:
    """`plan` takes a shortcut for a service not in the state; it is `_service_steps` with none."""
    t = Target("web", NEW, count, summary={"port": "8000"})
    made = plan(Desired({"web": t}), {}, NOW)
    assert list(made.steps[1:]) == _service_steps(t, (), NOW)
    assert [s.action for s in made.steps] == [Action.CREATE_SERVICE, *[ADD] * max(0, count)]
    # the steps are made without Step.__init__ (plan._made_step): the same values in every way
    plain = [Step(Action.CREATE_SERVICE, "web", reason="new service"), *_service_steps(t, (), NOW)]
    for fast, slow in zip(made.steps, plain, strict=True):
        assert (vars(fast), hash(fast), repr(fast), type(fast)) == (vars(slow), hash(slow), repr(slow), Step)
        assert list(vars(fast)) == [f.name for f in dataclasses.fields(Step)]


@settings(max_examples=400, deadline=None)
@given(
    st.integers(min_value=-1, max_value=3),
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=3),
            st.sampled_from(list(ReplicaPhase)),
            st.sampled_from([OLD, NEW]),
            st.integers(min_value=0, max_value=2),
        ),
        max_size=4,
    ),
)
def test_a_steady_service_is_skipped_only_when_it_has_no_step(
    count: int, replicas: list[tuple[int, ReplicaPhase, str, int]]
) -> None:
    """`plan` skips `_service_steps` for a service `_steady` calls steady: exactly then it gives
    no step (and the plan is the same either way)."""
    t = Target("web", NEW, count)
    rs = [rep(o, phase, spec, in_flight=busy, draining_since=NOW - 5) for o, phase, spec, busy in replicas]
    steps = _service_steps(t, rs, NOW)
    if _steady(t, rs):
        assert steps == []
    all_ready_current = len(rs) == max(0, count) and all(r.phase is R and r.spec_hash == NEW for r in rs)
    assert _steady(t, rs) == all_ready_current
    a = ServiceRecord(name="web", spec_hash=NEW, replicas=rs)
    assert list(plan(Desired({"web": t}), {"web": a}, NOW).steps) == steps
