"""The pure parts of HTTPS: which hosts ACME must issue for and when, and which names a certificate covers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.tls.files import CertInfo, name_matches, valid_host, valid_token
from gateway.tls.schedule import Failure, decide

NOW = datetime(2026, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def cert(host: str, issued_days_ago: float, lifetime_days: float = 90) -> CertInfo:
    start = NOW - issued_days_ago * DAY
    return CertInfo((host,), start, start + lifetime_days * DAY)


@pytest.mark.parametrize(
    ("certs", "failures", "covered", "due", "wake"),
    [
        pytest.param({}, {}, (), ("a.x", "gateway.x"), None, id="nothing-yet-all-due"),
        pytest.param({"a.x": cert("a.x", 10), "gateway.x": cert("gateway.x", 10)}, {}, (), (), NOW + 50 * DAY, id="fresh-wakes-at-2/3"),
        pytest.param({"a.x": cert("a.x", 61), "gateway.x": cert("gateway.x", 10)}, {}, (), ("a.x",), NOW + 50 * DAY, id="past-2/3-renewed"),
        pytest.param({"a.x": cert("other.x", 10), "gateway.x": cert("gateway.x", 10)}, {}, (), ("a.x",), NOW + 50 * DAY, id="wrong-name-reissued"),
        pytest.param({"gateway.x": cert("gateway.x", 10)}, {"a.x": Failure(1, NOW - timedelta(seconds=100))}, (), (),
                     NOW + timedelta(seconds=200), id="first-failure-waits-retry"),
        pytest.param({"gateway.x": cert("gateway.x", 10)}, {"a.x": Failure(3, NOW - timedelta(seconds=1100))}, (), (),
                     NOW + timedelta(seconds=100), id="third-failure-waits-4x"),
        pytest.param({"gateway.x": cert("gateway.x", 10)}, {"a.x": Failure(30, NOW - timedelta(hours=23))}, (), (),
                     NOW + timedelta(hours=1), id="backoff-capped-at-a-day"),
        pytest.param({"gateway.x": cert("gateway.x", 10)}, {"a.x": Failure(1, NOW - timedelta(seconds=300))}, (), ("a.x",), NOW + 50 * DAY,
                     id="backoff-over"),
        pytest.param({}, {}, ("*.x",), (), None, id="wildcard-file-covers-all"),
    ],
)
def test_decide(certs: dict[str, CertInfo], failures: dict[str, Failure], covered: tuple[str, ...], due: tuple[str, ...], wake: datetime | None) -> None:
    decision = decide(["gateway.x", "a.x", "a.x"], certs, failures, NOW, renew_fraction=1 / 3, retry=300.0, covered=covered)
    assert decision.due == due
    assert decision.wake == wake


@pytest.mark.parametrize(
    ("pattern", "host", "ok"),
    [
        ("*.example.com", "a.example.com", True),
        ("*.example.com", "a.b.example.com", False),
        ("*.example.com", "example.com", False),
        ("a.example.com", "a.example.com", True),
        ("a.example.com", "b.example.com", False),
    ],
)
def test_wildcard_covers_one_label(pattern: str, host: str, ok: bool) -> None:
    assert name_matches(pattern, host) is ok


@pytest.mark.parametrize(("text", "ok"), [("abc_-DEF09", True), ("../x", False), ("a/b", False), ("", False), ("a.b", False)])
def test_challenge_tokens_are_base64url_only(text: str, ok: bool) -> None:
    assert valid_token(text) is ok


@pytest.mark.parametrize(("text", "ok"), [("web.example.org", True), ("../etc", False), ("a/b.x", False), ("Web.x", False)])
def test_host_names_for_file_names(text: str, ok: bool) -> None:
    assert valid_host(text) is ok
