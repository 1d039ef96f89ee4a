"""Per-request counts stay in plain ints until a flush: when the worker's last request ends, or on demand."""

from __future__ import annotations

import uuid

import pytest
from prometheus_client import REGISTRY

from gateway.stats.counters import Stats


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize(
    ("seconds", "le"),
    [
        pytest.param(0.0005, "0.001", id="first-bucket"),
        pytest.param(0.001, "0.001", id="on-a-bound"),
        pytest.param(0.3, "0.5", id="middle"),
        pytest.param(1000.0, "+Inf", id="past-the-last-bound"),
    ],
)
def test_flush_when_the_worker_goes_idle(seconds: float, le: str) -> None:
    name = f"svc-{uuid.uuid4().hex[:8]}"
    stats = Stats()
    st = stats.service(name)
    st.begin(1.0)
    st.begin(1.0)
    st.end(200, seconds)
    # One request still in flight: nothing reached Prometheus yet.
    assert sample("tidegate_gateway_requests_total", service=name, code="200") == 0
    assert sample("tidegate_gateway_in_flight", service=name) == 0
    st.end(502, seconds)
    assert sample("tidegate_gateway_requests_total", service=name, code="200") == 1
    assert sample("tidegate_gateway_requests_total", service=name, code="502") == 1
    assert sample("tidegate_gateway_request_duration_seconds_count", service=name) == 2
    assert sample("tidegate_gateway_request_duration_seconds_sum", service=name) == pytest.approx(2 * seconds)
    assert sample("tidegate_gateway_request_duration_seconds_bucket", service=name, le=le) == 2
    assert stats.dirty == []


def test_explicit_flush_sets_gauges_while_busy() -> None:
    name = f"svc-{uuid.uuid4().hex[:8]}"
    stats = Stats()
    st = stats.service(name)
    for _ in range(3):
        st.begin(1.0)
    st.end(200, 0.01)
    stats.flush()
    assert sample("tidegate_gateway_in_flight", service=name) == 2
    assert sample("tidegate_gateway_requests_total", service=name, code="200") == 1
    stats.flush()  # nothing new: counts unchanged
    assert sample("tidegate_gateway_requests_total", service=name, code="200") == 1
    assert st.window.rate(1.0, 30) == pytest.approx(3 / 30)
