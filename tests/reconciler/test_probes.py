"""dstack `probes` drive readiness (routed after `ready_after` passes, unrouted on a failure, paced
by `interval`) and `rate_limits` are published in the routes snapshot; both parse as dstack's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from test_engine import WEB, World

from backends.base import BackendRegistry
from reconciler.config.models import ProbeSpec
from reconciler.config.parse import parse_service_text
from reconciler.engine.probe import ProbeResult
from reconciler.engine.reconcile import Engine
from reconciler.state.records import ReplicaPhase
from reconciler.state.view import status_views
from tidegate.routes import RateLimit, RateLimitKey
from tidegate.routes_io import read_snapshot

BASE = "type: service\ncommands: [serve]\nport: 8000\n"
PROBES = """\
probes:
  - type: http
    url: /health
    interval: 5s
    ready_after: 3
"""


class Answers:
    """An injected HTTP prober answering from a script ('.' pass, 'F' fail), then the last answer."""

    def __init__(self) -> None:
        self.script = ""
        self.calls: list[tuple[str, str]] = []

    def __call__(self, address: str, probe: ProbeSpec) -> ProbeResult:
        self.calls.append((address, probe.url))
        answer = self.script[0] if self.script else "."
        self.script = self.script[1:] if len(self.script) > 1 else self.script
        return ProbeResult(answer == ".", f"GET {probe.url} -> {200 if answer == '.' else 503}")


class ProbeWorld(World):
    def __init__(self, tmp: Path, **settings: object) -> None:
        self.answers = Answers()
        super().__init__(tmp, **settings)

    def open(self) -> Engine:
        return Engine(
            self.state,
            BackendRegistry({"local": self.backend}),
            self.settings,
            clock=self.clock,
            stats=lambda: self.stats,
            prober=self.prober,
            http_prober=self.answers,
        )


@pytest.fixture
def pw(tmp_path: Path) -> Iterator[ProbeWorld]:
    w = ProbeWorld(tmp_path, recheck_interval=10.0, unhealthy_threshold=3)
    try:
        yield w
    finally:
        w.engine.close()


def service(extra: str) -> str:
    return WEB.format(cmd="python -m http.server 8000") + extra


def test_routed_only_after_ready_after_passes_one_interval_apart(pw: ProbeWorld) -> None:
    snap = pw.repo.commit({"web.dstack.yml": service(PROBES)})
    pw.answers.script = "F.."
    routed: list[bool] = []
    for _ in range(20):  # one pass a second: probes run every 5 s
        pw.engine.reconcile(snap)
        routed.append(bool(pw.upstreams("web")))
        pw.clock.t += 1
    # pass 1 creates, pass 2 probes (fail), +5 s pass, +10 s pass, +15 s third pass -> routed
    assert routed.index(True) == 16 and all(routed[16:])
    assert [url for _a, url in pw.answers.calls[:4]] == ["/health"] * 4
    assert pw.prober.probed == []  # the built-in probe is replaced by the service's own


def test_ps_shows_probe_progress_and_failures(pw: ProbeWorld) -> None:
    snap = pw.repo.commit({"web.dstack.yml": service(PROBES)})
    pw.answers.script = "F"
    pw.engine.reconcile(snap)
    pw.clock.t += 1
    pw.engine.reconcile(snap)
    (view,) = status_views(pw.engine.doc)
    assert view.status == "pending" and "probe failed: GET /health -> 503" in view.reason
    pw.answers.script = "."
    pw.clock.t += 5
    pw.engine.reconcile(snap)
    (view,) = status_views(pw.engine.doc)
    assert "probes passed 1/3" in view.reason and view.replicas[0].probe_passes == 1


def test_a_ready_replica_whose_probe_fails_is_unrouted(pw: ProbeWorld) -> None:
    snap = pw.repo.commit({"web.dstack.yml": service(PROBES.replace("ready_after: 3", "ready_after: 1"))})
    pw.converge(snap)
    [rid] = pw.backend.running("web")
    assert pw.upstreams("web") == [rid]
    pw.answers.script = "F."
    pw.clock.t += 5
    pw.engine.reconcile(snap)
    assert pw.upstreams("web") == []
    r = pw.engine.doc.services["web"].replica(rid)
    assert r is not None and r.phase is ReplicaPhase.READY and r.probe_failures == 1
    pw.clock.t += 5
    pw.engine.reconcile(snap)
    assert pw.upstreams("web") == [rid]


def test_rate_limits_are_published_longest_prefix_first(pw: ProbeWorld) -> None:
    limits = """\
rate_limits:
  - rps: 10
  - prefix: /v1/chat/
    rps: 0.5
    burst: 4
    key:
      type: header
      header: X-API-Key
"""
    snap = pw.repo.commit({"web.dstack.yml": service(limits)})
    pw.converge(snap)
    route = read_snapshot(pw.state).services["web"]
    assert route.rate_limits == (
        RateLimit(prefix="/v1/chat/", rps=0.5, burst=4, key=RateLimitKey.HEADER, header="X-API-Key"),
        RateLimit(prefix="/", rps=10, burst=0, key=RateLimitKey.IP_ADDRESS),
    )
    hash_before = pw.engine.doc.services["web"].spec_hash
    snap2 = pw.repo.commit({"web.dstack.yml": service(limits.replace("rps: 10", "rps: 20"))})
    pw.converge(snap2)
    # a new limit is routing only: the replica is not rolled, the route changes
    assert pw.engine.doc.services["web"].spec_hash == hash_before
    assert read_snapshot(pw.state).services["web"].rate_limits[1].rps == 20


@pytest.mark.parametrize(
    ("extra", "field", "message"),
    [
        pytest.param("probes:\n  - url: health\n", "probes.0.url", "starting with `/`", id="url-not-a-path"),
        pytest.param("probes:\n  - type: tcp\n", "probes.0.type", "http", id="only-http"),
        pytest.param("probes:\n  - body: x\n", "probes.0.body", "cannot have a `body`", id="get-with-body"),
        pytest.param(
            "probes:\n  - ready_after: 0\n", "probes.0.ready_after", "greater than", id="ready-after-0"
        ),
        pytest.param("probes:\n  - timeout: 0s\n", "probes.0.timeout", "at least 1 second", id="timeout-0"),
        pytest.param("probes:\n  - methd: get\n", "probes.0.methd", "did you mean 'method'", id="typo"),
        pytest.param("rate_limits:\n  - rps: 0\n", "rate_limits.0.rps", "greater than 0", id="rps-0"),
        pytest.param("rate_limits:\n  - burst: 1\n", "rate_limits.0.rps", "missing", id="rps-required"),
        pytest.param(
            "rate_limits:\n  - rps: 1\n    key: {type: header}\n",
            "rate_limits.0.key.header",
            "needs `header:`",
            id="header-key-needs-header",
        ),
        pytest.param(
            "rate_limits:\n  - rps: 1\n  - rps: 2\n",
            "rate_limits.1.prefix",
            "two rate limits",
            id="dup-prefix",
        ),
        pytest.param(
            "rate_limits:\n  - rps: 1\n    prefix: v1\n", "rate_limits.0.prefix", "start with", id="prefix"
        ),
    ],
)
def test_probe_and_rate_limit_errors(extra: str, field: str, message: str) -> None:
    parsed = parse_service_text(BASE + extra, "s.dstack.yml")
    assert parsed.config is None
    found = [(d.field, d.message) for d in parsed.diagnostics]
    assert any(f == field and message in m for f, m in found), found


def test_dstack_probe_and_rate_limit_forms_parse() -> None:
    text = BASE + (
        "probes:\n  - type: http\n    url: /health\n    method: POST\n"
        "    headers:\n      - name: Authorization\n        value: Bearer x\n"
        "    body: '{}'\n    timeout: 5s\n    interval: 1m\n    ready_after: 2\n"
        "rate_limits:\n  - prefix: /api/\n    rps: 1.5\n    burst: 5\n    key:\n      type: ip_address\n"
    )
    parsed = parse_service_text(text, "s.dstack.yml")
    assert parsed.config is not None and parsed.diagnostics == []
    (probe,) = parsed.config.probes
    assert (probe.method, probe.timeout, probe.interval, probe.ready_after) == ("post", 5, 60, 2)
    assert parsed.config.rate_limits[0].to_route() == RateLimit(prefix="/api/", rps=1.5, burst=5)
