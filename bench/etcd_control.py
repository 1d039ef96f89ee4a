"""The control API of an `up` on etcd, measured (not a test): GET /api/v1/services on a standby, and
etcd requests over client TLS and with auth against plain ones.

A real single-member etcd for each transport (tests/support/etcd_secure.py: certificates made here,
users and roles through etcd's auth API) and the same state.json on each.

- API: the standby's plane (reconciler.control.shared) answering from its copy (< 1 s old) and
  with a fresh copy read from etcd; baseline in the same run: the directory `ControlPlane` over
  the same state.json (what `up` on a state directory answers).
- transport: one `get` through EtcdClient on plain HTTP (baseline), TLS with a client
  certificate, and auth (token in a header).

Median of `--runs` (default 100). Usage: .venv/bin/python bench/etcd_control.py [--runs 100]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from litestar.testing import TestClient  # noqa: E402

from gateway.access.tokens import TokenScope, TokenStore, create_token  # noqa: E402
from reconciler.control.app import build_control_app  # noqa: E402
from reconciler.control.auth import ControlContext  # noqa: E402
from reconciler.control.plane import ControlPlane  # noqa: E402
from reconciler.control.shared import SharedControlPlane  # noqa: E402
from reconciler.state.etcd_store import EtcdStore  # noqa: E402
from tests.control.conftest import state_doc  # noqa: E402
from tests.support.etcd_secure import AUTH_PREFIX, SecureEtcd, make_pki  # noqa: E402
from tidegate.etcd import EtcdClient, EtcdLocation  # noqa: E402


def median_ms(fn: Callable[[], object], runs: int) -> float:
    for _ in range(5):  # warm-up (imports, caches, connections)
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=100)
    runs = parser.parse_args().runs
    body = state_doc().model_dump_json().encode()
    rows: list[tuple[str, float, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        pki = make_pki(folder / "pki")
        plain, tls, auth = (
            SecureEtcd(folder / "plain"),
            SecureEtcd(folder / "tls", pki),
            SecureEtcd(folder / "auth"),
        )
        try:
            for etcd in (plain, tls, auth):
                etcd.start()
            auth.enable_auth()
            clients = {
                "plain": EtcdClient(EtcdLocation.parse(plain.url(AUTH_PREFIX))),
                "tls": EtcdClient(
                    EtcdLocation.parse(
                        tls.url(AUTH_PREFIX), cacert=str(pki.ca), cert=str(pki.client_cert), key=str(pki.client_key)
                    )
                ),
                "auth": EtcdClient(
                    EtcdLocation.parse(
                        auth.url(AUTH_PREFIX),
                        environ={"TIDEGATE_ETCD_USER": "tidegate", "TIDEGATE_ETCD_PASSWORD": auth.users["tidegate"]},
                    )
                ),
            }
            key = f"/{AUTH_PREFIX}/state.json"
            for client in clients.values():
                client.put(key, body)
            got = {name: median_ms(lambda c=client: c.get(key), runs) for name, client in clients.items()}
            for name, value in got.items():
                rows.append((f"etcd get over {name}", value, f"plain: {got['plain']:.2f} ms"))

            local = folder / "local"
            local.mkdir()
            (local / "state.json").write_bytes(body)
            admin = create_token(local, "ops", scope=TokenScope.ADMIN)
            headers = {"Authorization": f"Bearer {admin}"}
            shared = SharedControlPlane(local / "standby", EtcdStore(clients["plain"]))
            (local / "standby").mkdir()
            create_token(local / "standby", "ops", scope=TokenScope.ADMIN)
            direct = ControlPlane(local)
            apps = {
                "directory": build_control_app(ControlContext(plane=direct, tokens=TokenStore(local))),
                "standby": build_control_app(ControlContext(plane=shared, tokens=TokenStore(local))),
            }
            with TestClient(apps["directory"]) as d, TestClient(apps["standby"]) as s:
                baseline = median_ms(lambda: d.get("/api/v1/services", headers=headers), runs)
                cached = median_ms(lambda: s.get("/api/v1/services", headers=headers), runs)

                def fresh() -> None:
                    shared._copied_at = 0.0
                    s.get("/api/v1/services", headers=headers)

                refreshed = median_ms(fresh, runs)
            shared.close()
            rows.append(("GET /api/v1/services, standby (copy < 1 s)", cached, f"directory: {baseline:.2f} ms"))
            rows.append(("GET /api/v1/services, standby (fresh copy)", refreshed, f"directory: {baseline:.2f} ms"))
        finally:
            for etcd in (plain, tls, auth):
                etcd.close()
    print(f"| metric (median of {runs}) | ms | baseline (same run) |")
    print("| --- | --- | --- |")
    for name, value, baseline_text in rows:
        print(f"| {name} | {value:.2f} | {baseline_text} |")


if __name__ == "__main__":
    main()
