"""Scale to zero: requests to a service at zero replicas are held, signal demand, and go through."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway import coldstart
from tests.gateway.conftest import RunningGateway, snapshot_of, wait_for
from tests.gateway.conftest import Upstream as Proc
from tidegate.routes import ModelRoute, ServiceRoute, Upstream

MakeGateway = Callable[..., RunningGateway]


@pytest.fixture(autouse=True)
def no_periodic_wakeup(monkeypatch: pytest.MonkeyPatch) -> None:
    """Held requests must wake on the route change itself, not on the periodic demand reminder."""
    monkeypatch.setattr(coldstart, "DEMAND_REPEAT", 3600.0)


def demand_signals(state: Path) -> list[str]:
    return [p.read_text() for p in sorted((state / "signals").glob("*-demand-*.json"))] if (state / "signals").is_dir() else []


def at_zero(name: str, model: str | None = None) -> ServiceRoute:
    return ServiceRoute(
        name=name, host=f"{name}.localhost", auth=False, min_replicas=0, max_replicas=2,
        model=ModelRoute(name=model) if model else None,
    )


def test_held_request_succeeds_after_cold_start(make_gateway: MakeGateway, openai_upstream: Proc) -> None:
    gw = make_gateway()
    cold = at_zero("cold")
    gw.publish(snapshot_of(cold))
    results: list[httpx.Response] = []
    with gw.client("cold.localhost") as c:
        t = threading.Thread(target=lambda: results.append(c.get("/v1/models")))
        t.start()
        signals = wait_for(lambda: demand_signals(gw.settings.state_dir), "a demand signal")
        assert '"service": "cold"' in signals[0]
        assert gw.gateway.stats.service("cold").held == 1
        assert not results  # still held
        gw.publish(snapshot_of(cold.model_copy(update={"upstreams": (Upstream(replica_id="cold-0", url=openai_upstream.url),)})))
        t.join(15)
    assert results[0].status_code == 200
    assert float(results[0].headers["x-tidegate-cold-start"]) > 0
    assert gw.gateway.stats.service("cold").held == 0
    # Held requests count towards the rate the autoscaler sees.
    assert gw.gateway.stats.service("cold").window.rate(__import__("time").monotonic(), 300) > 0


def test_an_in_process_reconciler_is_woken_after_the_signal_is_written(
    make_gateway: MakeGateway, openai_upstream: Proc
) -> None:
    """`tidegate up` sets `on_demand`: its loop wakes at once; the signal file is already there to
    drain (the wake-up carries no data of its own)."""
    gw = make_gateway()
    cold = at_zero("woken")
    gw.publish(snapshot_of(cold))
    woken: list[tuple[str, int]] = []
    gw.gateway.cold.on_demand = lambda service: woken.append((service, len(demand_signals(gw.settings.state_dir))))
    results: list[httpx.Response] = []
    with gw.client("woken.localhost") as c:
        t = threading.Thread(target=lambda: results.append(c.get("/v1/models")))
        t.start()
        wait_for(lambda: woken, "the in-process wake-up")
        assert woken == [("woken", 1)]
        gw.gateway.set_snapshot(  # `up` hands routes over directly too (gateway.publish)
            snapshot_of(cold.model_copy(update={"upstreams": (Upstream(replica_id="woken-0", url=openai_upstream.url),)}))
        )
        t.join(15)
    assert results[0].status_code == 200


def test_hold_bound_gives_503_with_retry_after(make_gateway: MakeGateway) -> None:
    gw = make_gateway(hold_timeout=0.3)
    gw.publish(snapshot_of(at_zero("never")))
    with gw.client("never.localhost") as c:
        r = c.get("/")
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "cold_start_timeout"
    assert int(r.headers["retry-after"]) > 0


def test_hold_queue_bound(make_gateway: MakeGateway) -> None:
    gw = make_gateway(hold_queue=1, hold_timeout=30)
    gw.publish(snapshot_of(at_zero("full")))
    results: list[httpx.Response | BaseException] = []

    def first(c: httpx.Client) -> None:
        try:
            results.append(c.get("/"))
        except BaseException as e:  # shown by the assert below, not lost in the thread
            results.append(e)

    with gw.client("full.localhost") as c:
        t = threading.Thread(target=first, args=(c,))
        t.start()
        # (once flaky under load, not reproduced: a first request that ends before it is seen held
        # now fails at once and says how it ended)
        wait_for(lambda: gw.gateway.stats.service("full").held == 1 or results, "first request held")
        assert not results, f"the first request ended before it was seen held: {_describe(results[0])}"
        with gw.client("full.localhost") as c2:
            second = c2.get("/")
        assert second.status_code == 503 and second.json()["error"]["code"] == "queue_full"
        gw.publish(snapshot_of())  # the service goes away: the held request ends with 404
        t.join(15)
    assert isinstance(results[0], httpx.Response) and results[0].status_code == 404, _describe(results[0])


def _describe(result: httpx.Response | BaseException) -> str:
    if isinstance(result, httpx.Response):
        return f"{result.status_code} {result.text[:200]}"
    return f"{type(result).__name__}: {result}"


def test_openai_sdk_call_to_model_at_zero(make_gateway: MakeGateway, openai_upstream: Proc) -> None:
    from gateway.access.tokens import create_token

    gw = make_gateway()
    cold = at_zero("llm", model="cold-model")
    gw.publish(snapshot_of(cold))
    token = create_token(gw.settings.state_dir, "cold")
    gw.gateway.tokens.refresh(force=True)
    out: list[Any] = []

    def call() -> None:
        c = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=token, max_retries=0)
        out.append(c.chat.completions.with_raw_response.create(model="cold-model", messages=[{"role": "user", "content": "wake"}]))

    t = threading.Thread(target=call)
    t.start()
    wait_for(lambda: demand_signals(gw.settings.state_dir), "a demand signal")
    # The in-process path (`tidegate up`) swaps routes directly, from another thread.
    gw.gateway.set_snapshot(snapshot_of(cold.model_copy(update={"upstreams": (Upstream(replica_id="llm-0", url=openai_upstream.url),)})))
    t.join(15)
    raw = out[0]
    assert raw.headers["x-tidegate-cold-start"]
    assert raw.parse().choices[0].message.content == "echo: wake"


def test_client_hanging_up_ends_its_hold(make_gateway: MakeGateway) -> None:
    gw = make_gateway(hold_timeout=60)
    gw.publish(snapshot_of(at_zero("gone")))
    with httpx.Client(base_url=gw.url, headers={"Host": "gone.localhost"}, timeout=httpx.Timeout(5, read=0.5)) as c:
        try:
            c.get("/")
        except httpx.ReadTimeout:
            pass
        else:
            raise AssertionError("the request should still be held")
    # httpx closed the connection; the gateway notices and stops holding.
    wait_for(lambda: gw.gateway.stats.service("gone").held == 0, "hold released")
    wait_for(lambda: gw.gateway.stats.service("gone").in_flight == 0, "request finished")
