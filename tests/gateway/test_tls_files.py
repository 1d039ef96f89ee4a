"""HTTPS from `--tls-cert/--tls-key` files: served by SNI, swapped on disk without a restart, plain
HTTP redirected except ACME's challenge path; and the seed's OpenAI snippet (no `/v1`)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from gateway.options import add_gateway_options, gateway_overrides
from gateway.tls import challenges
from tests.gateway.conftest import ROOT, snapshot_of, wait_for
from tests.gateway.conftest import Upstream as Proc
from tests.gateway.tls_gateway import DOMAIN, TlsGateway, tls_settings
from tests.support.certs import Authority, make_ca, serial_of
from tests.support.pinned import loopback_client, peer_certificate_der
from tests.support.sshd import free_port
from tidegate.routes import ModelRoute, ServiceRoute, Upstream


@pytest.fixture
def ca() -> Authority:
    return make_ca()


@pytest.fixture
def wildcard(tmp_path: Path, ca: Authority) -> Iterator[tuple[TlsGateway, Path, Path, int]]:
    cert, key = tmp_path / "wild.crt", tmp_path / "wild.key"
    serial = ca.leaf([f"*.{DOMAIN}"], cert, key)
    gw = TlsGateway(tls_settings(tmp_path / "state", tls_cert=str(cert), tls_key=str(key)), free_port()).start()
    yield gw, cert, key, serial
    gw.stop()


def _route(name: str, url: str, **extra: object) -> ServiceRoute:
    return ServiceRoute(name=name, host=f"{name}.{DOMAIN}", upstreams=(Upstream(replica_id=f"{name}-0", url=url),), **extra)  # type: ignore[arg-type]


def test_wildcard_certificate_served_and_swapped_on_disk(
    wildcard: tuple[TlsGateway, Path, Path, int], ca: Authority, tmp_path: Path, openai_upstream: Proc
) -> None:
    gw, cert, key, first = wildcard
    gw.publish(snapshot_of(_route("oa", openai_upstream.url, auth=False)))
    root = str(ca.write(tmp_path / "ca.pem"))
    with loopback_client(root, timeout=10) as http:
        r = http.get(f"https://oa.{DOMAIN}:{gw.https_port}/health")
        assert r.status_code == 200, r.text
    assert serial_of(peer_certificate_der(f"oa.{DOMAIN}", gw.https_port, root)) == first
    # Replaced in place, key first (as a renewal script would): the next handshakes get the new one.
    second = ca.leaf([f"*.{DOMAIN}"], tmp_path / "next.crt", tmp_path / "next.key")
    key.write_bytes((tmp_path / "next.key").read_bytes())
    cert.write_bytes((tmp_path / "next.crt").read_bytes())
    wait_for(lambda: serial_of(peer_certificate_der(f"oa.{DOMAIN}", gw.https_port, root)) == second, "the new certificate", timeout=10)
    with loopback_client(root, timeout=10) as http:
        assert http.get(f"https://oa.{DOMAIN}:{gw.https_port}/health").status_code == 200
    # A name the certificate does not cover gets no handshake (no silent wrong certificate).
    with pytest.raises(OSError):
        peer_certificate_der("other.example", gw.https_port)


def test_plain_http_redirects_except_the_acme_challenge(wildcard: tuple[TlsGateway, Path, Path, int], openai_upstream: Proc) -> None:
    gw, *_ = wildcard
    gw.publish(snapshot_of(_route("oa", openai_upstream.url, auth=False)))
    with gw.plain(f"oa.{DOMAIN}") as http:
        r = http.get("/v1/models?x=1")
        assert r.status_code == 308
        assert r.headers["location"] == f"https://oa.{DOMAIN}:{gw.https_port}/v1/models?x=1"
        assert http.post("/v1/chat/completions", json={}).status_code == 308  # 308: method and body kept
        # The challenge path is answered by the gateway itself, over plain HTTP, for any host.
        assert http.get(f"{challenges.PREFIX}unknown-token").status_code == 404
        challenges.put(gw.settings.state_dir, "tok_123-x", "tok_123-x.thumbprint")
        r = http.get(f"{challenges.PREFIX}tok_123-x")
        assert (r.status_code, r.text) == (200, "tok_123-x.thumbprint")
        assert http.get(f"{challenges.PREFIX}..%2Ftokens.json").status_code == 404
    with gw.plain(f"gateway.{DOMAIN}") as http:
        assert http.get("/healthz").status_code == 308
    with gw.plain(f"127.0.0.1:{gw.plain_port}") as http:  # no certificate for the bare address: served as is
        assert http.get("/healthz").status_code == 200


def test_seed_openai_snippet_without_v1(wildcard: tuple[TlsGateway, Path, Path, int], ca: Authority, tmp_path: Path, openai_upstream: Proc) -> None:
    """`OpenAI(base_url="https://gateway.<domain>", api_key=token)`, verbatim (no /v1)."""
    from gateway.access.tokens import create_token

    gw, *_ = wildcard
    gw.publish(snapshot_of(_route("oa", openai_upstream.url, model=ModelRoute(name="oa-model"))))
    token = create_token(gw.settings.state_dir, "seed")
    gw.gateway.tokens.refresh(force=True)
    root = str(ca.write(tmp_path / "ca.pem"))
    with loopback_client(root, timeout=20) as http:
        client = openai.OpenAI(base_url=f"https://gateway.{DOMAIN}:{gw.https_port}", api_key=token, http_client=http, max_retries=0)
        assert [m.id for m in client.models.list()] == ["oa-model"]
        answer = client.chat.completions.create(model="oa-model", messages=[{"role": "user", "content": "hello"}])
        assert answer.choices[0].message.content
        assert http.get(f"https://gateway.{DOMAIN}:{gw.https_port}/models/oa-model", headers={"Authorization": f"Bearer {token}"}).json()["id"] == "oa-model"
        # Still a token API: without one, the root paths answer 401 like /v1.
        assert http.get(f"https://gateway.{DOMAIN}:{gw.https_port}/models").status_code == 401


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_gateway_options(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["--tls-cert", "a.crt"], "--tls-cert and --tls-key go together", id="cert-without-key"),
        pytest.param(["--https-listen", "0.0.0.0:443"], "--https-listen needs certificates", id="listener-without-certs"),
        pytest.param(["--acme-email", "a@b.c"], "need --https-listen", id="acme-without-listener"),
        pytest.param(["--https-listen", "443", "--acme-email", "a@b.c"], "--https-listen must look like", id="bad-listen"),
        pytest.param(["--https-listen", ":443", "--acme-email", "nobody"], "must be an e-mail address", id="bad-email"),
        pytest.param(["--https-listen", ":443", "--acme-directory", "https://x/dir"], "need --acme-email", id="directory-alone"),
        pytest.param(["--https-listen", ":443", "--tls-cert", "/nonexistent.crt", "--tls-key", "/nonexistent.key"],
                     "cannot read /nonexistent.crt", id="missing-file"),
    ],
)
def test_tls_option_errors(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        gateway_overrides(_parse(*argv))


def test_mismatched_key_is_a_clear_cli_error(tmp_path: Path, ca: Authority) -> None:
    ca.leaf(["a.example"], tmp_path / "a.crt", tmp_path / "a.key")
    ca.leaf(["b.example"], tmp_path / "b.crt", tmp_path / "b.key")
    out = subprocess.run(
        [sys.executable, "-m", "reconciler.cli.main", "gateway", "--state", str(tmp_path / "s"), "--https-listen", "127.0.0.1:0",
         "--tls-cert", str(tmp_path / "a.crt"), "--tls-key", str(tmp_path / "b.key")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2
    assert "does not fit" in out.stderr and str(tmp_path / "b.key") in out.stderr
    assert "Traceback" not in out.stderr


def test_gateway_command_serves_https_and_stops_cleanly(tmp_path: Path, ca: Authority) -> None:
    """`tidegate gateway --https-listen ... --tls-cert ... --tls-key ...` (one worker) as a process."""
    import signal

    import httpx

    ca.leaf([f"*.{DOMAIN}"], tmp_path / "w.crt", tmp_path / "w.key")
    root = str(ca.write(tmp_path / "ca.pem"))
    plain, https = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler.cli.main", "gateway", "--state", str(tmp_path / "state"), "--domain", DOMAIN,
         "--listen", f"127.0.0.1:{plain}", "--https-listen", f"127.0.0.1:{https}",
         "--tls-cert", str(tmp_path / "w.crt"), "--tls-key", str(tmp_path / "w.key")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        def healthy() -> bool:
            try:
                with loopback_client(root, timeout=2) as http:
                    return http.get(f"https://gateway.{DOMAIN}:{https}/healthz").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, "HTTPS from the gateway process", timeout=60)
        r = httpx.get(f"http://127.0.0.1:{plain}/healthz", headers={"Host": f"gateway.{DOMAIN}"})
        assert (r.status_code, r.headers["location"]) == (308, f"https://gateway.{DOMAIN}:{https}/healthz")
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert f"HTTPS on 127.0.0.1:{https}" in out and "Traceback" not in out
