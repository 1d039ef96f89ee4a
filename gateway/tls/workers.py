"""`tidegate gateway --workers N` with HTTPS: N worker processes sharing a plain and a TLS socket.

uvicorn's own supervisor builds a plain `uvicorn.Server` in each worker and serves every socket
it is given with one `ssl` setting, so it cannot run the plain and the TLS listener side by side.
This small supervisor binds both sockets here, spawns the workers (each runs `GatewayServer` with
the inherited sockets and its own `CertStore`), runs the ACME manager in this process only (one
issuer per gateway; the workers load what it writes), and on SIGINT/SIGTERM - or when a worker
dies - stops them all, giving requests the shutdown grace. A dead worker is not restarted: the
gateway exits non-zero and its service manager restarts it whole.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import signal
import socket
import threading
from types import FrameType

import uvicorn

from gateway.settings import GatewaySettings
from gateway.tls.listener import GatewayServer, bind_https, start_acme

log = logging.getLogger("uvicorn.error")


def _worker(config: uvicorn.Config, plain: socket.socket, tls: socket.socket) -> None:
    config.configure_logging()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the SIGINT it shut down for
        GatewayServer(config, None, tls_sock=tls).run(sockets=[plain])


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host if host not in ("0.0.0.0", "::") else "127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def serve_workers(settings: GatewaySettings, config: uvicorn.Config) -> None:
    assert settings.https_address is not None
    plain = config.bind_socket()
    tls = bind_https(settings.https_address)
    spawn = multiprocessing.get_context("spawn")
    workers = [spawn.Process(target=_worker, args=(config, plain, tls), name=f"tidegate-gateway-{i}") for i in range(settings.workers)]
    for w in workers:
        w.start()
    log.info("gateway: %d workers, HTTP on %s:%d, HTTPS on %s:%d", len(workers), settings.host, settings.port, *settings.https_address)
    acme = start_acme(settings, ready=lambda: _listening(settings.host, settings.port))
    stop = threading.Event()

    def on_signal(_sig: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    failed = False
    try:
        while not stop.wait(0.5):
            if any(not w.is_alive() for w in workers):
                log.error("gateway: a worker exited; stopping the others")
                failed = True
                break
    finally:
        if acme is not None:
            acme.stop()
        for w in workers:
            if w.is_alive():
                w.terminate()  # SIGTERM: uvicorn's graceful shutdown in the worker
        for w in workers:
            w.join(settings.shutdown_grace + 5)
            if w.is_alive():
                w.kill()
                w.join()
        plain.close()
        tls.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    if failed:
        raise SystemExit(3)
