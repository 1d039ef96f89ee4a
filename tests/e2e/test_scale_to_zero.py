"""Scale to zero end to end: a real `tidegate up` (reconciler + gateway) and the local backend.

One service with `replicas: 0..1` and a mapped OpenAI model follows the whole cycle: deployed at
zero with its route published; a first request through the gateway (Host header) is held, wakes
the reconciler and is answered after the cold start, with no client retry and the gateway's
cold-start header; `ps` says why it scaled; with no requests it goes back to zero after the
window and `scale_down_delay`, the route stays, and an OpenAI SDK call (token from `tidegate token
create`) to the model is held again and succeeds. The held request alone scales the service up:
the autoscaler counts requests waiting at zero, so no second request is ever sent.
"""

from __future__ import annotations

import json
import re
import textwrap
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.helpers import ROOT, Remote, Tidegate, replica_trees, wait_for

pytestmark = pytest.mark.slow

MODEL = "tidegate/echo-cold"
COLD_HEADER = "x-tidegate-cold-start"


def cold_yaml(name: str) -> str:
    return textwrap.dedent(
        f"""\
        type: service
        name: {name}
        commands:
          - python3 openai_server.py --port 8000 --model {MODEL}
        port: 8000
        backends: [local]
        resources:
          cpu: 1..
          memory: 64MB..
          disk: 1GB..
        replicas: 0..1
        scaling:
          metric: rps
          target: 5
          scale_up_delay: 2s
          scale_down_delay: 2s
          window: 30
        model:
          format: openai
          name: {MODEL}
        """
    )


def route_of(tg: Tidegate, name: str) -> dict[str, Any] | None:
    path = tg.state / "routes.json"
    if not path.exists():
        return None
    route: dict[str, Any] | None = json.loads(path.read_text())["services"].get(name)
    return route


def at_zero(tg: Tidegate, name: str) -> dict[str, Any] | None:
    s = tg.ps().get(name)
    route = route_of(tg, name)
    ok = s and s["status"] == "scaled-to-zero" and not s["replicas"] and route and not route["upstreams"]
    return s if ok else None


def test_held_first_request_then_back_to_zero_then_openai_sdk(remote: Remote, tidegate: Tidegate) -> None:
    tg = tidegate
    servers = ROOT / "examples" / "servers"
    files = {name: (servers / name).read_text() for name in ("openai_server.py", "_http.py")}
    remote.push({**files, ".dstack.yml": cold_yaml("cold")}, "a service at zero")
    created = tg.run("token", "create", "e2e")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[0]
    tg.up(remote.url)

    # Deployed at zero: no replica, but the route (host, auth, model) is published.
    s = wait_for(lambda: at_zero(tg, "cold"), 60, "the service deployed at zero")
    assert s["desired"] == 0 and s["ready"] == 0
    assert not replica_trees(tg.state)

    # One request, no retry: held through the cold start and answered.
    url = f"http://127.0.0.1:{tg.port}/v1/models"
    headers = {"Host": "cold.localhost", "Authorization": f"Bearer {token}"}
    with httpx.Client(timeout=60, transport=httpx.HTTPTransport(retries=0)) as http:
        r = http.get(url, headers=headers)
    assert r.status_code == 200, r.text
    assert [m["id"] for m in r.json()["data"]] == [MODEL]
    assert float(r.headers[COLD_HEADER]) > 0
    s = tg.ps()["cold"]
    assert s["desired"] == 1 and s["ready"] == 1 and s["status"] == "running"
    assert s["scaling"].startswith("0 -> 1: scale from zero: 1 request(s) waiting"), s["scaling"]
    assert "target 5/replica" in s["scaling"]
    assert len(replica_trees(tg.state)) == 1

    # No more requests: once the request leaves the 30 s window and scale_down_delay has passed,
    # back to zero; the route stays.
    s = wait_for(lambda: at_zero(tg, "cold"), 60, "scale back to zero")
    assert s["scaling"].startswith("1 -> 0: scale down 1 -> 0: rps 0.00"), s["scaling"]
    assert "scale_down_delay 2s" in s["scaling"]
    # The one held request alone kept it at 1 until it left the 30 s window (counted on arrival).
    since = re.search(r"; (\d+)s since last scaling", s["scaling"])
    assert since and int(since[1]) >= 25, s["scaling"]
    route = route_of(tg, "cold")
    assert route is not None and route["host"] == "cold.localhost" and route["model"]["name"] == MODEL
    wait_for(lambda: not replica_trees(tg.state), 20, "the replica's processes to end")

    # The OpenAI SDK through the gateway's /v1 to the model at zero: held again, then answered.
    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{tg.port}/v1", api_key=token, max_retries=0, timeout=60
    )
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "wake up"}]
    )
    assert float(raw.headers[COLD_HEADER]) > 0
    assert raw.parse().choices[0].message.content == "echo: wake up"
    s = tg.ps()["cold"]
    assert s["desired"] == 1 and s["ready"] == 1
    assert s["scaling"].startswith("0 -> 1: scale from zero: 1 request(s) waiting"), s["scaling"]
    assert [h.partition(":")[0] for h in s["scaling_history"]] == ["0 -> 1", "1 -> 0", "0 -> 1"], s
