"""Which etcd member the client asks first (tidegate.etcd_transport.Endpoints): pure bookkeeping,
as a table of what the members did and the order that follows."""

from __future__ import annotations

import pytest

from tidegate.etcd_transport import FORGET_AFTER, STALL, Endpoints

# Events: (kind, member, asked at, ended at): "ok" answered, "fail" failed, "out" still asked (no end)
Event = tuple[str, int, float, float | None]
CASES = [
    pytest.param([], 10.0, [0, 1, 2], id="nothing known: in turn from the first"),
    pytest.param([("ok", 2, 9.0, 9.01)], 10.0, [2, 0, 1], id="the member that answered last first"),
    pytest.param(
        [("ok", 1, 1.0, 1.01), ("fail", 1, 5.0, 5.01)], 10.0, [2, 0, 1], id="it failed since: asked last"
    ),
    pytest.param(
        [("fail", 0, 5.0, 7.0), ("fail", 1, 7.0, 7.01)],
        10.0,
        [2, 1, 0],
        id="a fast failure (refused, error answer) before a held request that timed out",
    ),
    pytest.param(
        [("fail", 0, 1.0, 1.01), ("fail", 1, 2.0, 2.01), ("fail", 2, 3.0, 3.01)],
        10.0,
        [0, 1, 2],
        id="all failed alike: the oldest failure first",
    ),
    pytest.param([("out", 0, 9.0, None)], 10.0, [1, 2, 0], id="holding a request past STALL now: last"),
    pytest.param([("out", 0, 10.0 - STALL / 2, None)], 10.0, [0, 1, 2], id="a request out briefly is no failure"),
    pytest.param(
        [("out", 0, 8.0, None), ("out", 1, 9.0, None), ("fail", 2, 3.0, 5.0)],
        10.0,
        [2, 1, 0],
        id="a member holding one now after one that failed; held the shortest first",
    ),
    pytest.param(
        [("fail", 0, 1.0, 3.0)], 3.0 + FORGET_AFTER + 1, [0, 1, 2], id="an old failure is forgotten"
    ),
    pytest.param(
        [("fail", 0, 1.0, 3.0), ("ok", 0, 4.0, 4.01)], 10.0, [0, 1, 2], id="an answer clears the failure"
    ),
]


@pytest.mark.parametrize(("events", "now", "expected"), CASES)
def test_order(events: list[Event], now: float, expected: list[int]) -> None:
    ep = Endpoints(3)
    for kind, member, asked, ended in events:
        token = ep.asking(member, asked)
        if kind == "ok":
            ep.answered(member, token)
        elif kind == "fail" and ended is not None:
            ep.failed(member, token, ended)
    assert ep.order(now) == expected


def test_order_leaves_out_the_members_already_asked() -> None:
    ep = Endpoints(3)
    assert ep.order(1.0, frozenset({0, 2})) == [1]
