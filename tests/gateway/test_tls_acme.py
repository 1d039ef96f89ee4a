"""Certificates over ACME, for real: Pebble (Let's Encrypt's test CA) validates HTTP-01 against the
gateway's plain listener, and curl and the openai SDK talk HTTPS to a service and to gateway.<domain>."""

from __future__ import annotations

import logging
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from gateway.access.tokens import create_token
from gateway.tls.acme_issue import AcmeAccount
from gateway.tls.files import account_key_path, cert_paths, read_cert_info
from gateway.tls.manager import AcmeManager
from tests.gateway.conftest import Upstream as Proc
from tests.gateway.conftest import snapshot_of, wait_for
from tests.gateway.tls_gateway import DOMAIN, TlsGateway, tls_settings
from tests.support.certs import serial_of
from tests.support.pebble import Pebble
from tests.support.pinned import loopback_client, peer_certificate_der
from tests.support.sshd import free_port
from tidegate.routes import ModelRoute, ServiceRoute, Upstream

GW_HOST = f"gateway.{DOMAIN}"


@pytest.fixture
def plain_port() -> int:
    return free_port()


def _pebble(tmp_path: Path, plain_port: int, validity: int | None = None) -> Iterator[Pebble]:
    pebble = Pebble(tmp_path / "pebble", plain_port, validity)
    yield pebble
    pebble.stop()


@pytest.fixture
def pebble(tmp_path: Path, plain_port: int) -> Iterator[Pebble]:
    yield from _pebble(tmp_path, plain_port)


def _acme_gateway(tmp_path: Path, pebble: Pebble, plain_port: int, **overrides: object) -> TlsGateway:
    settings = tls_settings(
        tmp_path / "state", acme_email="ops@tidegate.test", acme_directory=pebble.directory,
        acme_ca_bundle=str(pebble.wfe_cert), acme_retry=1.0, **overrides,
    )
    return TlsGateway(settings, plain_port)


def _route(name: str, url: str, **extra: object) -> ServiceRoute:
    return ServiceRoute(name=name, host=f"{name}.{DOMAIN}", upstreams=(Upstream(replica_id=f"{name}-0", url=url),), **extra)  # type: ignore[arg-type]


def _serves(host: str, port: int, root: str) -> bool:
    try:
        peer_certificate_der(host, port, root)
        return True
    except OSError:
        return False


def _curl(root: Path, host: str, port: int, path: str, token: str) -> str:
    # One retry on a handshake cut short (curl exit 35, SSL_ERROR_SYSCALL): seen once, in the
    # two-worker test on a 2-core machine at load 13, after six good handshakes; not reproduced
    # and not explained (the handshake timeout is 15 s). A certificate or trust error is exit 60
    # or a TLS alert and is never retried.
    for attempt in range(2):
        out = subprocess.run(
            ["curl", "-sS", "--fail-with-body", "--cacert", str(root), "--resolve", f"{host}:{port}:127.0.0.1",
             "-H", f"Authorization: Bearer {token}", f"https://{host}:{port}{path}"],
            capture_output=True, text=True, timeout=30, check=False,
        )
        if not (out.returncode == 35 and "SSL_ERROR_SYSCALL" in out.stderr and attempt == 0):
            break
        print(f"retrying after a cut handshake: {out.stderr.strip()}")
    assert out.returncode == 0, out.stderr + out.stdout
    return out.stdout


@pytest.mark.slow
def test_certificates_issued_served_and_kept_across_restart(
    tmp_path: Path, pebble: Pebble, plain_port: int, openai_upstream: Proc
) -> None:
    gw = _acme_gateway(tmp_path, pebble, plain_port).start(acme=True)
    state = gw.settings.state_dir
    try:
        gw.publish(snapshot_of(_route("oa", openai_upstream.url, model=ModelRoute(name="oa-model"))))
        token = create_token(state, "seed")
        gw.gateway.tokens.refresh(force=True)
        root = pebble.root_file()
        for host in (GW_HOST, f"oa.{DOMAIN}"):
            wait_for(lambda h=host: _serves(h, gw.https_port, str(root)), f"a certificate for {host}", timeout=60)  # type: ignore[misc]
        # Stored in the state dir; private keys (and the account key) readable by us only.
        for host in (GW_HOST, f"oa.{DOMAIN}"):
            cert, key = cert_paths(state, host)
            assert read_cert_info(cert.read_bytes()).names == (host,)
            assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert stat.S_IMODE(account_key_path(state).stat().st_mode) == 0o600

        # curl trusting Pebble's root: a service and the gateway host, by name.
        assert '"status"' in _curl(root, f"oa.{DOMAIN}", gw.https_port, "/health", token)
        assert "oa-model" in _curl(root, GW_HOST, gw.https_port, "/models", token)
        # The seed's snippet, verbatim but for the port: base_url without /v1.
        with loopback_client(str(root), timeout=20) as http:
            client = openai.OpenAI(base_url=f"https://{GW_HOST}:{gw.https_port}", api_key=token, http_client=http, max_retries=0)
            answer = client.chat.completions.create(model="oa-model", messages=[{"role": "user", "content": "hi"}])
            assert answer.choices[0].message.content
        # Plain HTTP to a certified host is redirected.
        with gw.plain(f"oa.{DOMAIN}") as http:
            assert http.get("/health").headers["location"] == f"https://oa.{DOMAIN}:{gw.https_port}/health"

        # A service that appears later gets its certificate without a restart.
        gw.publish(snapshot_of(_route("oa", openai_upstream.url), _route("late", openai_upstream.url)))
        wait_for(lambda: _serves(f"late.{DOMAIN}", gw.https_port, str(root)), "a certificate for the new service", timeout=60)
        assert gw.acme is not None
        assert gw.acme.issued == 3
        served = serial_of(peer_certificate_der(f"oa.{DOMAIN}", gw.https_port, str(root)))
        mtimes = {p: p.stat().st_mtime_ns for p in (state / "tls" / "certs").iterdir()}
    finally:
        gw.stop()

    # Restart: the certificates on disk are valid, so nothing is issued (a CA's rate limits count
    # every certificate), and the new gateway serves the same ones at once.
    gw2 = TlsGateway(gw.settings, plain_port).start()
    try:
        manager = AcmeManager(state, AcmeAccount("ops@tidegate.test", pebble.directory, str(pebble.wfe_cert)), GW_HOST)
        decision = manager.step()
        assert decision.due == ()
        assert decision.wake is not None  # the earliest renewal
        assert manager.issued == 0
        assert {p: p.stat().st_mtime_ns for p in (state / "tls" / "certs").iterdir()} == mtimes
        assert serial_of(peer_certificate_der(f"oa.{DOMAIN}", gw2.https_port, str(root))) == served
    finally:
        gw2.stop()


@pytest.mark.slow
def test_short_lived_certificate_is_renewed(tmp_path: Path, plain_port: int) -> None:
    """Pebble issues 9-second certificates; with 60% of the lifetime left the manager gets a new
    one (an issuance takes ~2 s: the library polls once a second) and the HTTPS listener serves it
    without a restart, before the old one expires."""
    pebble = Pebble(tmp_path / "pebble", plain_port, validity=10)
    gw = _acme_gateway(tmp_path, pebble, plain_port, acme_renew_fraction=0.6).start(acme=True)
    try:
        root = str(pebble.root_file())
        wait_for(lambda: _serves(GW_HOST, gw.https_port, root), "the first certificate", timeout=60)
        cert = cert_paths(gw.settings.state_dir, GW_HOST)[0]
        info = read_cert_info(cert.read_bytes())
        assert info.lifetime() <= 10
        first = serial_of(peer_certificate_der(GW_HOST, gw.https_port, root))
        wait_for(lambda: serial_of(peer_certificate_der(GW_HOST, gw.https_port, root)) != first, "a renewed certificate", timeout=30)
        renewed = read_cert_info(cert.read_bytes())
        assert renewed.not_after > info.not_after
        # Renewed before expiry: around 2/3 of the old one's lifetime, not after it ended.
        assert renewed.not_before < info.not_after
    finally:
        gw.stop()
        pebble.stop()


def test_failed_validation_logged_once_and_backed_off(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Pebble validates against a port where nothing listens: one clear line, no traceback, and
    the host waits out its backoff instead of spending the CA's failed-validation limit."""
    pebble = Pebble(tmp_path / "pebble", free_port())
    try:
        state = tmp_path / "state"
        manager = AcmeManager(
            state, AcmeAccount("ops@tidegate.test", pebble.directory, str(pebble.wfe_cert)), GW_HOST, retry=300.0,
        )
        with caplog.at_level(logging.INFO, logger="tidegate.gateway.acme"):
            manager.step()
            again = manager.step()  # within the backoff: not tried again
        assert manager.failures[GW_HOST].count == 1
        assert again.due == ()
        assert again.wake is not None
        lines = [r for r in caplog.records if r.name == "tidegate.gateway.acme"]
        assert len(lines) == 1, [r.getMessage() for r in lines]
        message = lines[0].getMessage()
        assert GW_HOST in message and "validation failed" in message and "connection refused" in message.lower()
        assert lines[0].exc_info is None
        assert not cert_paths(state, GW_HOST)[0].exists()
        assert not list((state / "tls" / "acme-challenges").iterdir())  # answers cleaned up
        # A restart (a crash loop, say) keeps the backoff: no new attempt right away.
        restarted = AcmeManager(state, AcmeAccount("ops@tidegate.test", pebble.directory, str(pebble.wfe_cert)), GW_HOST, retry=300.0)
        assert restarted.failures == manager.failures
        assert restarted.step().due == ()
    finally:
        pebble.stop()


@pytest.mark.slow
def test_gateway_command_with_two_workers_and_acme(tmp_path: Path, plain_port: int, openai_upstream: Proc) -> None:
    """`tidegate gateway --workers 2 --https-listen ... --acme-email ...` as a real process: the
    parent issues, both workers serve HTTPS, SIGINT stops everything."""
    import signal
    import sys

    from tests.gateway.conftest import ROOT
    from tidegate.routes_io import write_snapshot

    pebble = Pebble(tmp_path / "pebble", plain_port)
    state = tmp_path / "state"
    write_snapshot(state, snapshot_of(_route("oa", openai_upstream.url, auth=False)))
    https_port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler.cli.main", "gateway", "--state", str(state), "--domain", DOMAIN,
         "--listen", f"127.0.0.1:{plain_port}", "--workers", "2", "--https-listen", f"127.0.0.1:{https_port}",
         "--acme-email", "ops@tidegate.test", "--acme-directory", pebble.directory, "--acme-ca-bundle", str(pebble.wfe_cert)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        root = pebble.root_file()
        # Each worker loads the new certificate within a second: then every connection gets it.
        wait_for(lambda: all(_serves(f"oa.{DOMAIN}", https_port, str(root)) for _ in range(6)), "HTTPS from both workers", timeout=90)
        for _ in range(4):
            assert '"status"' in _curl(root, f"oa.{DOMAIN}", https_port, "/health", "unused")
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        pebble.stop()
    assert proc.returncode == 0, out
    assert "HTTPS on 127.0.0.1" in out
    assert "Traceback" not in out
