"""A gateway fed from etcd: routes and tokens by watch, signals and request stats pushed up.

Why: with `--state etcd://…` any number of gateways on any machines serve the same services. The
gateway itself is unchanged — it reads `routes.json` and `tokens.json` in its local directory and
reloads them the moment they change (inotify). This feed keeps those two files equal to the keys
on etcd: read whole, then watched; every change lands within milliseconds. When etcd is out of
reach the files are left as they are (the gateway keeps serving the last known routes and tokens)
and `etcd-status.json` says so (`/healthz` answers "degraded"); when it is back everything is read
again, so a token revoked meanwhile is refused from that moment (auth never fails open: a token
is only ever accepted if the last tokens.json read from etcd holds it).

Upward, from the local directory: signal files (`signals/*.json`, a push webhook, a request held
for a service at zero replicas) move to `signals/` on etcd where the leading reconciler takes
them; each gateway process's stats file is copied to `stats/<node>-<pid>.json` every second under
this feed's lease (a dead machine's numbers vanish with it). A reconciler that leads consumes its
own machine's signals locally, so it turns `push_signals` off.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from gateway.access.tokens import TOKENS_FILE
from tidegate.etcd import (
    KV,
    SIGNALS_PREFIX,
    STATS_PREFIX,
    EtcdClient,
    EtcdError,
    EtcdLocation,
)
from tidegate.etcd_watch import run_watch, write_feed_status
from tidegate.fsio import write_atomic
from tidegate.routes import ROUTES_FILE
from tidegate.signals import SIGNALS_DIR
from tidegate.stats_file import STATS_DIR

log = logging.getLogger("tidegate.gateway.etcd")

FED_FILES = (ROUTES_FILE, TOKENS_FILE)
# routes.json as read from etcd -> (what this machine's gateway serves, a problem for /healthz or
# None). The `tidegate gateway` and `up` commands pass one that opens this machine's own SSH
# tunnels to cloud replicas (composed in the CLI: the gateway imports no backend).
TUNNELS = "tunnels"  # the status part a RoutesRewrite's problem goes to
RoutesRewrite = Callable[[bytes], tuple[bytes, "str | None"]]
# Copies of other machines' stats that a leading reconciler keeps locally start with this.
REMOTE_STATS = "stats-remote-"
STATS_TTL = 10


class EtcdFeed:
    def __init__(
        self,
        location: EtcdLocation,
        local_dir: Path,
        node: str,
        push_signals: Callable[[], bool] = lambda: True,
        interval: float = 0.2,
        health_every: float = 1.0,
        rewrite_routes: RoutesRewrite | None = None,
    ) -> None:
        self.client = EtcdClient(location)
        self.location = location
        self.local_dir = Path(local_dir)
        self.node = node.replace("/", "_")
        self.push_signals = push_signals
        self.interval = interval
        self.health_every = health_every
        self.rewrite_routes = rewrite_routes
        self.stop_event = threading.Event()
        self._threads: list[threading.Thread] = []
        self._errors: dict[str, str | None] = {}
        self._status: str | None = "starting"
        self._etcd_logged: str | None = "starting"
        self._status_since = time.time()
        self._lease = 0
        self._status_lock = threading.Lock()
        self.synced = threading.Event()  # set once both files were read from etcd
        self._synced: set[str] = set()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.local_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._set_status("health", "starting")
        for name in FED_FILES:
            self._spawn(f"watch-{name}", lambda n=name: self._watch(n))  # type: ignore[misc]
        self._spawn("push", self._push_loop)
        self._spawn("health", self._health_loop)

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        t = threading.Thread(target=target, name=f"tidegate-etcd-{name}", daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        self.stop_event.set()
        for t in self._threads:
            t.join(timeout=3)
        if self._lease:
            with contextlib.suppress(EtcdError):
                self.client.revoke(self._lease)

    # -- health ------------------------------------------------------------------------------
    @property
    def status(self) -> str | None:
        return self._status

    def _set_status(self, part: str, error: str | None) -> None:
        with self._status_lock:
            self._errors[part] = error
            status = next((e for e in self._errors.values() if e), None)
            etcd = next((e for p, e in self._errors.items() if e and p != TUNNELS), None)
            if etcd != self._etcd_logged:  # the rewrite logs its own problems (once per replica)
                if etcd is None:
                    log.info("etcd %s reachable again: routes and tokens follow it", self.location.describe())
                else:
                    log.warning("etcd out of reach, serving the last known routes and tokens: %s", etcd)
                self._etcd_logged = etcd
            if status == self._status:
                return
            self._status, self._status_since = status, time.time()
            try:
                write_feed_status(self.local_dir, status, self._status_since)
            except OSError as e:
                log.warning("cannot write %s: %s", self.local_dir, e)

    def _health_loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.client.get(self.location.key("leader"))
                self._set_status("health", None)
            except EtcdError as e:
                self._set_status("health", str(e))
            self.stop_event.wait(self.health_every)

    # -- downward: routes and tokens ---------------------------------------------------------
    def _write_local(self, name: str, body: bytes) -> None:
        if name == ROUTES_FILE and self.rewrite_routes is not None:
            body, problem = self.rewrite_routes(body)
            self._set_status(TUNNELS, problem)
        path = self.local_dir / name
        with contextlib.suppress(OSError):
            if path.read_bytes() == body:
                return
        write_atomic(path, body, mode=0o600)

    def _watch(self, name: str) -> None:
        key = self.location.key(name)

        def on_snapshot(kvs: list[KV]) -> None:
            for kv in kvs:
                if kv.key == key:
                    self._write_local(name, kv.value)

        def on_event(kind: str, kv: KV) -> None:
            # A deleted key is not applied: the last known routes/tokens keep serving (as for a
            # routes.json deleted on disk), and deleting keys is no way to revoke a token.
            if kind == "PUT" and kv.key == key:
                self._write_local(name, kv.value)

        def on_health(error: str | None) -> None:
            if error is None:
                self._mark_synced(name)
            self._set_status(f"watch-{name}", error)

        run_watch(self.client, key, on_snapshot, on_event, on_health, self.stop_event)

    def _mark_synced(self, name: str) -> None:
        self._synced.add(name)
        if self._synced >= set(FED_FILES):
            self.synced.set()

    # -- upward: signals and stats -----------------------------------------------------------
    def _push_loop(self) -> None:
        last_stats = 0.0
        while not self.stop_event.wait(self.interval):
            try:
                if self.push_signals():
                    self._push_signals()
                if time.monotonic() - last_stats >= 1.0:
                    self._push_stats()
                    last_stats = time.monotonic()
            except EtcdError as e:
                log.debug("push to etcd: %s", e)
            except OSError as e:
                log.warning("reading %s: %s", self.local_dir, e)

    def _push_signals(self) -> None:
        folder = self.local_dir / SIGNALS_DIR
        if not folder.is_dir():
            return
        for path in sorted(folder.glob("*.json")):
            try:
                body = path.read_bytes()
            except FileNotFoundError:
                continue
            self.client.put(self.location.key(f"{SIGNALS_PREFIX}{self.node}-{path.name}"), body)
            path.unlink(missing_ok=True)

    def _push_stats(self) -> None:
        folder = self.local_dir / STATS_DIR
        files = (
            [p for p in folder.glob("stats-*.json") if not p.name.startswith(REMOTE_STATS)]
            if folder.is_dir()
            else []
        )
        if not files:
            return
        if not self._lease or self.client.keepalive(self._lease) <= 0:
            self._lease = self.client.grant(STATS_TTL)
        for path in files:
            try:
                body = path.read_bytes()
            except FileNotFoundError:
                continue
            pid = path.name.removeprefix("stats-").removesuffix(".json")
            self.client.put(
                self.location.key(f"{STATS_PREFIX}{self.node}-{pid}.json"), body, lease=self._lease
            )


@contextlib.contextmanager
def fed(
    location: EtcdLocation, local_dir: Path, node: str, wait: float = 5.0, rewrite_routes: RoutesRewrite | None = None
) -> Iterator[EtcdFeed]:
    """A started feed (waited for its first read of etcd, at most `wait` s), stopped on exit."""
    feed = EtcdFeed(location, local_dir, node, rewrite_routes=rewrite_routes)
    feed.start()
    if not feed.synced.wait(wait):
        log.warning(
            "etcd %s did not answer in %.0fs: starting with the routes and tokens on disk",
            location.describe(),
            wait,
        )
    try:
        yield feed
    finally:
        feed.stop()
