"""Rate limits with a real `tidegate up`: a service's dstack `rate_limits` and the settings file's
per-token limits, enforced by up's gateway in front of a real replica; a bad settings file is an
error naming its line."""

from __future__ import annotations

import httpx
import pytest

from gateway.access.tokens import create_token
from tests.e2e.helpers import Remote, Tidegate, service_yaml, wait_for

pytestmark = pytest.mark.slow

LIMITS = """\
rate_limits:
  - prefix: /
    rps: 0.05
    burst: 2
"""


def test_up_enforces_service_and_token_limits(remote: Remote, tidegate: Tidegate) -> None:
    tg = tidegate
    private = service_yaml("private", 1).replace("auth: false", "auth: true")
    remote.push({"web.dstack.yml": service_yaml("web", 1, extra=LIMITS), "private.dstack.yml": private}, "limits")
    tg.state.mkdir(parents=True, exist_ok=True)
    metered = create_token(tg.state, "metered")
    free = create_token(tg.state, "free")
    settings = tg.logs / "settings.yml"
    settings.write_text("token_limits:\n  metered:\n    - {rps: 0.05, burst: 1}\n")
    tg.up(remote.url, "--settings", str(settings))

    def serving(name: str) -> bool:
        s = tg.ps().get(name)
        return bool(s and s["ready"] == 1)

    wait_for(lambda: serving("web") and serving("private"), 120, "deploy")
    codes = [tg.get("web", "/a").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]  # 1 + burst 2, then limited
    limited = tg.get("web", "/b")
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"

    def get(token: str) -> int:
        url = f"http://127.0.0.1:{tg.port}/services/private/"
        return httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=5).status_code

    assert [get(metered) for _ in range(3)] == [200, 200, 429]
    assert [get(free) for _ in range(5)] == [200] * 5  # no limit of its own and no `*`


def test_up_refuses_a_bad_token_limits_section(remote: Remote, tidegate: Tidegate) -> None:
    remote.push({"web.dstack.yml": service_yaml("web", 1)}, "one service")
    settings = tidegate.logs / "settings.yml"
    settings.write_text("sandbox: auto\ntoken_limits:\n  ci:\n    - {rps: 0}\n")
    out = tidegate.run("plan", "--repo", remote.url, "--settings", str(settings))
    assert out.returncode != 0
    assert f"{settings}:4:" in out.stderr + out.stdout and "token_limits.ci[0].rps" in out.stderr + out.stdout
    assert "Traceback" not in out.stderr
