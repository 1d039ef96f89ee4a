"""A real `tidegate up` with dstack `probes` and `rate_limits`: the replica answers /health with 503
for its first seconds; `ps` shows the failing probe, then the replica is routed after `ready_after`
passes, and the routes snapshot carries the rate limits for the gateway."""

from __future__ import annotations

import json
import textwrap

import pytest

from tests.e2e.helpers import APP, Remote, Tidegate, service_yaml, wait_for

pytestmark = pytest.mark.slow

SLOW_START_APP = textwrap.dedent(
    """
    import sys, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    STARTED = time.monotonic()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            ok = self.path != "/health" or time.monotonic() - STARTED > 4
            body = b"ok" if ok else b"warming up"
            self.send_response(200 if ok else 503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
    """
)

EXTRA = """\
probes:
  - type: http
    url: /health
    interval: 1s
    timeout: 2s
    ready_after: 2
rate_limits:
  - prefix: /
    rps: 5
    burst: 10
"""


def test_probes_gate_routing_and_rate_limits_are_published(remote: Remote, tidegate: Tidegate) -> None:
    config = service_yaml("web", extra=EXTRA).replace("python3 app.py 8000", "python3 slow.py 8000")
    remote.push({"app.py": APP, "slow.py": SLOW_START_APP, "web.dstack.yml": config}, "probed service")
    tidegate.up(remote.url)

    def failing_probe_shown() -> bool:
        web = tidegate.ps().get("web")
        return bool(web) and "probe failed: GET /health -> 503" in (web["reason"] or "")

    wait_for(failing_probe_shown, 90, "ps shows the failing probe")
    routes = tidegate.state / "routes.json"
    assert json.loads(routes.read_text())["services"]["web"]["upstreams"] == []
    web = wait_for(lambda: (s := tidegate.ps().get("web")) and s["ready"] == 1 and s, 60, "web ready")
    assert web["status"] == "running"
    route = json.loads(routes.read_text())["services"]["web"]
    assert len(route["upstreams"]) == 1
    assert route["rate_limits"] == [
        {"prefix": "/", "rps": 5.0, "burst": 10, "key": "ip_address", "header": None}
    ]
    assert tidegate.get("web", "/health").status_code == 200
    # `ps` (no --listen) prints URLs at the running gateway's address, not the default :8080
    assert web["url"] == f"http://web.localhost:{tidegate.port}"
    assert f"http://web.localhost:{tidegate.port}" in tidegate.run("ps").stdout
