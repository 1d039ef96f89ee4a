"""A push that changes only code (app.py, no `.dstack.yml`) rolls the local replicas.

A real `tidegate up` follows a bare repo: a config-only push to another service leaves `web`'s
replicas alone, then a push of a new app.py rolls `web` (new replicas ready before the old ones
stop) while a client goes through the gateway: no failed request, and the new code answers.
"""

from __future__ import annotations

import textwrap

import pytest

from tests.e2e.helpers import APP, Remote, Tidegate, service_yaml, wait_for
from tests.e2e.test_gitops import Hammer, ready_at

pytestmark = pytest.mark.slow


def app_version(version: str) -> str:
    """The helpers' APP, answering with a code version in the `greeting` field instead of the env."""
    app = APP.replace('os.environ.get("GREETING")', repr(version))
    assert app != APP
    return textwrap.dedent(app)


def replica_ids(tg: Tidegate, name: str) -> set[str]:
    return {r["id"] for r in tg.ps()[name]["replicas"]}


def test_code_only_push_rolls_without_failed_requests(remote: Remote, tidegate: Tidegate) -> None:
    tg = tidegate
    rev1 = remote.push(
        {
            "app.py": app_version("code-v1"),
            "web.dstack.yml": service_yaml("web", 2),
            "other/.dstack.yml": service_yaml("other", 1, "o"),
        },
        "web and other",
    )
    up = tg.up(remote.url)
    wait_for(lambda: ready_at(tg, "web", rev1, 2) and ready_at(tg, "other", rev1, 1), 90, "first deploy")
    assert tg.get("web").json()["greeting"] == "code-v1"
    web_v1 = replica_ids(tg, "web")

    # Another service's config changes: that one rolls, web does not.
    other_v1 = replica_ids(tg, "other")
    rev2 = remote.push({"other/.dstack.yml": service_yaml("other", 1, "o2")}, "other: new greeting")
    wait_for(
        lambda: ready_at(tg, "other", rev2, 1) and replica_ids(tg, "other") != other_v1, 90, "other rolled"
    )
    assert ready_at(tg, "web", rev2, 2) and replica_ids(tg, "web") == web_v1

    # Only app.py changes: web rolls (new replicas ready before the old stop) under traffic.
    hammer = Hammer(tg, "web")
    hammer.start()
    try:
        wait_for(lambda: len(hammer.greetings) > 5, 30, "client traffic")
        rev3 = remote.push({"app.py": app_version("code-v2")}, "fix the server")
        wait_for(
            lambda: ready_at(tg, "web", rev3, 2) and not (replica_ids(tg, "web") & web_v1), 120, "web rolled"
        )
        n = len(hammer.greetings)
        wait_for(lambda: len(hammer.greetings) > n + 5, 30, "traffic after the roll")
    finally:
        hammer.stop.set()
        hammer.join(15)
    assert hammer.failures == [], hammer.failures[:5]
    assert "code-v1" in hammer.greetings and hammer.greetings[-1] == "code-v2"
    assert set(hammer.greetings) <= {"code-v1", "code-v2"}
    assert tg.get("web").json()["greeting"] == "code-v2"
    assert up.poll() is None
