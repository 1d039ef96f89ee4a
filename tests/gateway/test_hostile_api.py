"""Hostile `/v1` requests and chat templates against a real gateway: 400s in OpenAI's shape, templates
bounded in time, output and memory without holding up anyone else, TGI answers capped."""

from __future__ import annotations

import json
import logging
import statistics
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.gateway.conftest import RunningGateway, snapshot_of
from tests.gateway.conftest import Upstream as Proc
from tests.gateway.raw_upstream import Exchange, RawUpstream
from tidegate.routes import ModelRoute, ServiceRoute, Upstream

MakeGateway = Callable[..., RunningGateway]
TokenFor = Callable[[RunningGateway], str]

PLAIN = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:"
TEMPLATES = {
    "plain": PLAIN,
    # 10^10 iterations, no call inside the loops: only a kill stops it.
    "spin": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x",
    "bomb": "{{ 'x' * 1000000000 }}",
    "power": "{{ 9 ** 99999999 }}",
    "wide": "{% for i in range(100000) %}{{ 'yyyyyyyyyyyyyyyyyyyy' }}{% endfor %}",
    "deep": "{% set ns = namespace(s='a') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
}


def _big_generate(ex: Exchange) -> bool:
    body = json.dumps({"generated_text": "z" * 5000, "details": {"finish_reason": "length", "generated_tokens": 1}}).encode()
    ex.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    return True


@pytest.fixture
def api(make_gateway: MakeGateway, openai_upstream: Proc, tgi_unix_upstream: Proc, token_for: TokenFor) -> Iterator[tuple[RunningGateway, dict[str, str]]]:
    big = RawUpstream({"generate": _big_generate}).start()
    gw = make_gateway(max_tgi_response_bytes=4096, template_timeout=1.0, template_workers=2)
    routes = [ServiceRoute(name="oa", host="oa.localhost", upstreams=(Upstream(replica_id="oa-0", url=openai_upstream.url),), model=ModelRoute(name="oa-model"))]
    routes += [
        ServiceRoute(name=n, host=f"{n}.localhost", upstreams=(Upstream(replica_id=f"{n}-0", url=tgi_unix_upstream.url),),
                     model=ModelRoute(name=n, format="tgi", chat_template=t, eos_token="</s>"))  # type: ignore[arg-type]
        for n, t in TEMPLATES.items()
    ]
    routes.append(ServiceRoute(name="big", host="big.localhost", upstreams=(Upstream(replica_id="big-0", url=big.url),),
                               model=ModelRoute(name="big", format="tgi", chat_template=PLAIN)))  # type: ignore[arg-type]
    gw.publish(snapshot_of(*routes))
    yield gw, {"Authorization": f"Bearer {token_for(gw)}", "Content-Type": "application/json"}
    big.stop()


def _chat(model: str, **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def _quiet(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        pytest.param(b'{"model": "plain", "messages": [], "temperature": NaN}', "invalid_json", id="nan-literal"),
        pytest.param(b'{"model": "oa-model", "x": Infinity}', "invalid_json", id="infinity-literal-openai-format"),
        pytest.param(b'{"model": "plain", "a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "invalid_json", id="nested-100k-deep"),
        pytest.param(b"{not json", "invalid_json", id="not-json"),
        pytest.param(json.dumps(_chat("plain", stream_options="x")).encode(), "invalid_request", id="stream-options-string"),
        pytest.param(json.dumps(_chat("plain", stream=True, stream_options={"include_usage": "yes"})).encode(), "invalid_request", id="include-usage-string"),
        pytest.param(b'{"model": "plain", "messages": [{"role": "user", "content": "hi"}], "temperature": 1e400}', "invalid_request", id="temperature-inf"),
        pytest.param(json.dumps(_chat("plain", temperature=7)).encode(), "invalid_request", id="temperature-out-of-range"),
        pytest.param(json.dumps(_chat("plain", max_tokens=True)).encode(), "invalid_request", id="max-tokens-bool"),
        pytest.param(json.dumps(_chat("plain", n=True)).encode(), "invalid_request", id="n-bool"),
        pytest.param(json.dumps(_chat("plain", seed=-1)).encode(), "invalid_request", id="seed-negative"),
        pytest.param(json.dumps(_chat("plain", stream="yes")).encode(), "invalid_request", id="stream-string"),
    ],
)
def test_bad_requests_are_400(api: tuple[RunningGateway, dict[str, str]], caplog: pytest.LogCaptureFixture, body: bytes, code: str) -> None:
    gw, headers = api
    with caplog.at_level(logging.INFO), httpx.Client(base_url=gw.url, headers=headers, timeout=20) as c:
        r = c.post("/v1/chat/completions", content=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == code
    _quiet(caplog)


@pytest.mark.parametrize(
    ("model", "needle", "within"),
    [
        pytest.param("spin", "took over 1 s", 4.0, id="silent-nested-loop-killed"),
        pytest.param("bomb", "output over", 2.0, id="string-multiplication"),
        pytest.param("power", "output over", 2.0, id="huge-power"),
        pytest.param("wide", "output over", 3.0, id="output-over-1MiB"),
        pytest.param("deep", "", 4.0, id="doubling-string"),
    ],
)
def test_hostile_templates_are_400_and_hold_up_no_one(
    api: tuple[RunningGateway, dict[str, str]], model: str, needle: str, within: float
) -> None:
    gw, headers = api
    with httpx.Client(base_url=gw.url, headers=headers, timeout=30) as c:
        assert c.post("/v1/chat/completions", json=_chat("plain")).status_code == 200  # renderers warm
    lags: list[float] = []
    done = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            while not done.is_set():
                t0 = time.perf_counter()
                c.get("/healthz")
                lags.append(time.perf_counter() - t0)
                time.sleep(0.01)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        while not lags:
            time.sleep(0.01)
        started = time.monotonic()
        with httpx.Client(base_url=gw.url, headers=headers, timeout=30) as c:
            r = c.post("/v1/chat/completions", json=_chat(model))
        took = time.monotonic() - started
    finally:
        done.set()
        prober.join()
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]["message"]
    assert took < within
    # Other requests kept being answered all along: typically in milliseconds, and no single wait as
    # long as the hostile render's own bound. (A max under 0.25 s held on a quiet box but not on a
    # 2-core box running three suites at once, where one /healthz waited 1.5 s on the scheduler.)
    assert lags and statistics.median(lags) < 0.1, statistics.median(lags)
    assert max(lags) < within, max(lags)
    assert len(lags) >= int(took * 10)
    with httpx.Client(base_url=gw.url, headers=headers, timeout=30) as c:  # and the renderers still work
        assert c.post("/v1/chat/completions", json=_chat("plain")).status_code == 200


def test_tgi_answer_over_the_cap_is_502(api: tuple[RunningGateway, dict[str, str]], caplog: pytest.LogCaptureFixture) -> None:
    gw, headers = api
    with caplog.at_level(logging.INFO), httpx.Client(base_url=gw.url, headers=headers, timeout=20) as c:
        r = c.post("/v1/chat/completions", json=_chat("big"))
    assert r.status_code == 502
    assert "over 4096 bytes" in r.json()["error"]["message"]
    _quiet(caplog)
