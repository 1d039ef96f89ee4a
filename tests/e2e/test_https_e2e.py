"""`tidegate up --https-listen ... --acme-email ...` for real: a pushed service gets a certificate
from Pebble and answers at https://<name>.<domain>, plain HTTP redirects there."""

from __future__ import annotations

import subprocess

import httpx
import pytest

from tests.e2e.helpers import Remote, Tidegate, free_port, service_yaml, wait_for
from tests.support.pebble import Pebble

DOMAIN = "tidegate.test"


@pytest.mark.slow
def test_up_serves_a_pushed_service_over_https_with_acme(remote: Remote, tidegate: Tidegate) -> None:
    tg = tidegate
    pebble = Pebble(tg.logs / "pebble", tg.port)
    https_port = free_port()
    try:
        remote.push({"web.dstack.yml": service_yaml("web", 1, "secure")}, "a service")
        tg.up(remote.url, "--domain", DOMAIN, "--https-listen", f"127.0.0.1:{https_port}", "--acme-email", "ops@tidegate.test",
              "--acme-directory", pebble.directory, "--acme-ca-bundle", str(pebble.wfe_cert))
        root = pebble.root_file()

        def curl() -> str | None:
            out = subprocess.run(
                ["curl", "-sS", "--cacert", str(root), "--resolve", f"web.{DOMAIN}:{https_port}:127.0.0.1",
                 f"https://web.{DOMAIN}:{https_port}/"], capture_output=True, text=True, timeout=20, check=False,
            )
            return out.stdout if out.returncode == 0 and "secure" in out.stdout else None

        assert '"greeting": "secure"' in wait_for(curl, 120, "the service over HTTPS")
        r = httpx.get(f"http://127.0.0.1:{tg.port}/", headers={"Host": f"web.{DOMAIN}"})
        assert (r.status_code, r.headers["location"]) == (308, f"https://web.{DOMAIN}:{https_port}/")
    finally:
        pebble.stop()
    log = tg.log_text()
    assert f"OpenAI API at https://gateway.{DOMAIN}:{https_port}" in log
    assert "ACME: certificate issued for web.tidegate.test" in log
    assert "Traceback" not in log
