"""`tidegate gateway` as a real process with two workers: routes from the state dir, summed metrics."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.gateway.conftest import ROOT, wait_for
from tests.gateway.conftest import Upstream as Proc
from tidegate.routes import RoutesSnapshot, ServiceRoute, Upstream
from tidegate.routes_io import write_snapshot


@pytest.mark.slow
def test_two_worker_gateway_process(tmp_path: Path, openai_upstream: Proc) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    state = tmp_path / "state"
    write_snapshot(state, RoutesSnapshot(serial=1, services={
        "oa": ServiceRoute(name="oa", host="oa.localhost", auth=False, upstreams=(Upstream(replica_id="oa-0", url=openai_upstream.url),)),
    }))
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler.cli.main", "gateway", "--state", str(state), "--listen", f"127.0.0.1:{port}", "--workers", "2"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, "gateway process", timeout=60)
        wait_for(lambda: len(list((state / "gateway").glob("stats-*.json"))) == 2, "both workers publishing", timeout=60)
        for _ in range(10):  # fresh connections: the kernel spreads them over the workers
            assert httpx.get(f"{url}/health", headers={"Host": "oa.localhost"}).status_code == 200
        metrics = httpx.get(f"{url}/metrics").text
        assert 'tidegate_gateway_requests_total{code="200",service="oa"} 10.0' in metrics

        def total_rate() -> bool:
            files = [json.loads(f.read_text()) for f in (state / "gateway").glob("stats-*.json")]
            return sum(f["services"].get("oa", {}).get("rps_300", 0) for f in files) == pytest.approx(10 / 300, abs=1e-3)  # each file rounds to 4 places

        wait_for(total_rate, "stats files summing to all requests")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    assert not list((state / "gateway").glob("stats-*.json"))
    assert not list((state / "gateway").glob("prometheus-*"))
