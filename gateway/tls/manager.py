"""The ACME manager: a thread beside the gateway that keeps a certificate for every host it serves.

One per gateway (in the process that starts the workers, or in `tidegate up`), never on the
request path: it reads the published routes (`routes.json`) every `poll` seconds, asks
`schedule.decide` which hosts are due (new services, certificates at 2/3 of their lifetime,
failures past their backoff), and issues for them one at a time. The workers pick the files up
within a second (`CertStore.refresh`). A restart finds the certificates in the state directory
and issues nothing until they are due. Each host's failure is logged once per distinct reason.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from gateway.tls.acme_issue import AcmeAccount, AcmeClient, AcmeFailure
from gateway.tls.files import CertInfo, cert_paths, read_cert_info, tls_dir, utcnow, valid_host
from gateway.tls.schedule import Decision, Failure, decide
from tidegate.fsio import write_json_atomic
from tidegate.routes_io import read_snapshot

log = logging.getLogger("tidegate.gateway.acme")
FAILURES_FILE = "acme-failures.json"


class AcmeManager:
    def __init__(
        self,
        state_dir: Path,
        account: AcmeAccount,
        gateway_host: str,
        *,
        covered: tuple[str, ...] = (),
        renew_fraction: float = 1 / 3,
        retry: float = 300.0,
        poll: float = 2.0,
        now: Callable[[], datetime] = utcnow,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.client = AcmeClient(state_dir, account)
        self.gateway_host = gateway_host
        self.covered = covered
        self.renew_fraction = renew_fraction
        self.retry = retry
        self.poll = poll
        self.now = now
        self.ready = ready  # the plain listener is up (the CA will connect to it)
        self.failures: dict[str, Failure] = _load_failures(state_dir)  # kept across restarts: a crash
        # loop must not retry a failing host at every start (CAs count failed validations)
        self._reasons: dict[str, str] = {}
        self._routes_error: str | None = None
        self._said_no_hosts = False
        self._stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.issued = 0  # certificates obtained by this manager (restarts start at 0)

    def hosts(self) -> set[str]:
        """The gateway host and every routed service's host (what the CA will be asked about)."""
        wanted = {self.gateway_host}
        try:
            snapshot = read_snapshot(self.state_dir)
            self._routes_error = None
        except Exception as e:  # a half-written or newer routes file: keep the gateway host, say why once
            if str(e) != self._routes_error:
                self._routes_error = str(e)
                log.warning("ACME: cannot read the routes (%s); trying again", str(e).splitlines()[0])
            return wanted
        wanted.update(s.host.lower() for s in snapshot.services.values())
        public = {h for h in wanted if valid_host(h) and not h.endswith((".localhost", ".local")) and h != "localhost"}
        if not public and not self._said_no_hosts:
            self._said_no_hosts = True  # e.g. --domain localhost: no CA issues for it
            log.warning("ACME: no public host name to get a certificate for (%s); set --domain", ", ".join(sorted(wanted)))
        return public

    def certificates(self, hosts: set[str]) -> dict[str, CertInfo]:
        found: dict[str, CertInfo] = {}
        for host in hosts:
            try:
                found[host] = read_cert_info(cert_paths(self.state_dir, host)[0].read_bytes())
            except (OSError, ValueError):
                continue  # none yet, or unreadable: issue one
        return found

    def step(self) -> Decision:
        """One round: issue what is due now. Returns the decision (for the wait, and for tests)."""
        hosts = self.hosts()
        decision = decide(
            hosts, self.certificates(hosts), self.failures, self.now(),
            renew_fraction=self.renew_fraction, retry=self.retry, covered=self.covered,
        )
        for host in decision.due:
            if self._stop.is_set():
                break
            self._issue(host)
        return decision

    def _issue(self, host: str) -> None:
        try:
            self.client.issue(host)
        except AcmeFailure as e:
            failure = self.failures.get(host)
            self.failures[host] = Failure((failure.count if failure else 0) + 1, self.now())
            _save_failures(self.state_dir, self.failures)
            if self._reasons.get(host) != str(e):
                self._reasons[host] = str(e)
                log.warning("ACME: no certificate for %s yet: %s (retrying with backoff)", host, e)
            return
        except OSError as e:  # the state dir itself: disk full, permissions
            log.warning("ACME: cannot store the certificate for %s: %s", host, e)
            return
        if self.failures.pop(host, None) is not None:
            _save_failures(self.state_dir, self.failures)
        self._reasons.pop(host, None)
        self.issued += 1
        log.info("ACME: certificate issued for %s", host)

    def run(self) -> None:
        while self.ready is not None and not self.ready():
            if self._stop.wait(0.05):
                return
        while not self._stop.is_set():
            try:
                decision = self.step()
            except Exception as e:  # the loop boundary: log, keep going
                log.warning("ACME: %s: %s", type(e).__name__, e)
                decision = Decision((), None)
            wait = self.poll
            if decision.wake is not None:
                wait = min(wait, max(0.0, (decision.wake - self.now()).total_seconds()))
            self._stop.wait(max(0.05, wait))

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name="tidegate-acme", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self.thread is not None:
            self.thread.join(timeout=10)


def _failures_path(state_dir: Path) -> Path:
    return tls_dir(state_dir) / FAILURES_FILE


def _load_failures(state_dir: Path) -> dict[str, Failure]:
    try:
        raw = json.loads(_failures_path(state_dir).read_bytes())
        return {str(h): Failure(int(f["count"]), datetime.fromisoformat(f["at"])) for h, f in raw.items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        log.warning("ACME: ignoring %s (%s)", _failures_path(state_dir), e)
        return {}


def _save_failures(state_dir: Path, failures: dict[str, Failure]) -> None:
    body = {h: {"count": f.count, "at": f.at.isoformat()} for h, f in sorted(failures.items())}
    try:
        write_json_atomic(_failures_path(state_dir), body, indent=1, mode=0o600)
    except OSError as e:
        log.warning("ACME: cannot record failures in %s: %s", _failures_path(state_dir), e.strerror or e)
