"""`tidegate up --state etcd://…`: one of several reconcilers on a shared state, leading or standing by.

Why a module of its own: `cmd_up` runs one reconciler over one directory; here the same pieces
(engine, pass, loop, gateway) are arranged around an election (reconciler.state.leader):

- every `up` serves its gateway at once, fed from etcd (gateway.etcd_feed): routes, tokens; and
  the control API and dashboard (reconciler.control.shared: from the engine while leading, from
  etcd while standing by, actions forwarded to the leader as signals on etcd);
- it campaigns; while another leads it stands by (its gateway's signals and stats go to etcd);
- on winning it pulls the shared state into its local directory (reconciler.state.etcd_sync),
  opens the engine with fenced store and journal, recovers (settles every open intent of the
  previous leader, exactly as after a crash: no duplicate replica), and runs the loop;
- when leadership is lost (lease expired after a pause, etcd out of reach for a lease, another
  leader) the loop stops, the engine is closed, and it stands by again. Whatever the loop tried
  meanwhile was refused by the fence.

SIGINT/SIGTERM resign (a standby takes over at once) and leave replicas running.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

from gateway.etcd_feed import EtcdFeed
from reconciler.cli import runtime, serving, tunnel_keys
from reconciler.cli.common import fail
from reconciler.cli.gateway_tunnels import GatewayTunnels
from reconciler.cli.output import say
from reconciler.cli.settings import Settings
from reconciler.control.shared import SharedControlPlane
from reconciler.engine.loop import Loop
from reconciler.state.etcd_store import EtcdStore
from reconciler.state.etcd_sync import PULLED_DOCS, FencedJournal, FencedStateStore, LeaderSync, post_signal
from reconciler.state.leader import DEFAULT_TTL, Leadership, node_name
from tidegate.etcd import (
    PREVIEWS_PREFIX,
    EtcdClient,
    EtcdError,
    EtcdLocation,
    EtcdUnavailable,
)
from tidegate.fsio import write_atomic

log = logging.getLogger("tidegate.ha")

SYNC_EVERY = 0.2
FAILED_TERM_PAUSE = 5.0  # after a term that failed (source unreachable, local lock held)


class HaUp:
    def __init__(self, settings: Settings, location: EtcdLocation, args: Any, ttl: int = DEFAULT_TTL) -> None:
        self.settings = settings
        self.location = location
        self.args = args
        self.client = EtcdClient(location)
        self.node = node_name()
        # This machine's tag on its gateway's stats and signals (the leader skips its own).
        self.tag = f"{socket.gethostname()}-{settings.listen.rpartition(':')[2]}"
        self.leadership = Leadership(self.client, self.node, ttl=ttl)
        self.stop = threading.Event()
        # Every gateway fed from etcd opens its own tunnels to cloud replicas (the leader's sockets
        # are on the leader's machine): a standby's gateway serves them too.
        self.keys_dir = tunnel_keys.keys_dir(settings.state_dir, settings.tunnel_keys)
        self.gateway_tunnels = GatewayTunnels(settings.state_dir, self.keys_dir)
        self.feed = EtcdFeed(
            location, settings.state_dir, self.tag, push_signals=lambda: self.leadership.fence is None,
            rewrite_routes=self.gateway_tunnels,
        )  # fmt: skip
        self.gateway: serving.GatewayThread | None = None
        self.exit_code = 0
        self.plane: SharedControlPlane | None = None  # the control API's, with the gateway
        self.control_stop = threading.Event()

    # -- the whole run -----------------------------------------------------------------------
    def run(self) -> int:
        self._signals()
        try:
            self.client.probe(write=True)  # a leader writes: a read-only role is refused now
        except EtcdUnavailable:
            pass  # it may answer later: stand by (the gateway serves what the local dir has)
        except EtcdError as e:  # refused as configured (TLS, user, permission): say so and stop
            return fail(str(e))
        self.settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self._has_cloud():
            try:  # before anything starts: a machine with the wrong keys must not even stand by
                say(tunnel_keys.check(self.client, self.location, self.keys_dir, lead=False))
            except tunnel_keys.TunnelKeysError as e:
                say(f"error: {e}", stream=sys.stderr, style="red")
                return 2
            except EtcdError as e:
                say(f"warning: cannot read the recorded tunnel keys yet ({e}); checked again on leading")
        self.feed.start()
        if not self.feed.synced.wait(5):
            say(f"warning: etcd {self.location.describe()} does not answer yet; serving what {self.settings.state_dir} has")
        try:
            if not getattr(self.args, "no_gateway", False):
                control, self.plane = serving.build_shared_control(self.settings, EtcdStore(self.client), self.control_stop)
                self.gateway = serving.GatewayThread(self.settings, None, control)
                if not self.gateway.start():
                    say(f"error: gateway: {self.gateway.error}")
                    return 1
            while not self.stop.is_set():
                say(f"tidegate up: standing by on {self.location.describe()} (leader: {self._holder()})")
                if not self.leadership.campaign(self.stop):
                    break
                try:
                    self._lead()
                except tunnel_keys.TunnelKeysError as e:  # resigns below; a standby with the keys leads
                    say(f"error: {e}", stream=sys.stderr, style="red")
                    self.exit_code = 2
                    break
                except Exception:  # the boundary of one leadership term: log, stand by again
                    log.exception("leading failed; standing by")
                    self.leadership.resign()
                    self.stop.wait(FAILED_TERM_PAUSE)  # another `up` may lead meanwhile
                finally:
                    self.leadership.resign()
        finally:
            self.leadership.resign()
            self.control_stop.set()
            if self.gateway is not None:
                self.gateway.stop()
            if self.plane is not None:
                self.plane.close()
            self.feed.stop()
            self.gateway_tunnels.shutdown()
        say("tidegate stopped; replicas keep running (the next leader adopts them)")
        return self.exit_code

    def _has_cloud(self) -> bool:
        if self.settings.settings_file is None:
            return False
        from reconciler.cli.settings import load_cloud_settings

        return bool(load_cloud_settings(self.settings.settings_file, self.settings.env).backends)

    def _holder(self) -> str:
        try:
            return self.leadership.holder() or "none yet"
        except EtcdError:
            return "etcd out of reach"

    def _signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def on_term(signum: int, frame: FrameType | None) -> None:
            log.info("received %s: resigning, replicas keep running", signal.Signals(signum).name)
            self.stop.set()

        signal.signal(signal.SIGINT, on_term)
        signal.signal(signal.SIGTERM, on_term)

    # -- one term as leader ------------------------------------------------------------------
    def _lead(self) -> None:
        shared = EtcdStore(self.client, self.leadership.fence)
        sync = LeaderSync(self.settings.state_dir, shared, self.tag)
        say(f"tidegate up: leading {self.location.describe()} as {self.node}: {sync.pull()}")
        if self._has_cloud():  # the cloud backends start only with the installation's tunnel keys
            say(tunnel_keys.check(self.client, self.location, self.keys_dir, lead=True))
        engine = runtime.build_engine(
            self.settings,
            make_store=lambda d: FencedStateStore(d, shared),
            make_journal=lambda d: FencedJournal(d, shared),
        )
        loop: Loop | None = None
        try:
            sync.after_open()
            for line in engine.recover():
                say(f"recovered: {line}")
            source = runtime.require_source(self.settings)
            previews = runtime.build_previews(self.settings, self.args, source, engine)
            engine.extension = previews
            if self.plane is not None:  # the control API answers from this engine while it leads
                self.plane.lead(*serving.backend_callables(engine))
            loops: list[Loop] = []
            the_pass = runtime.Pass(
                engine,
                source,
                lambda: loops[0].take_signals(),
                fetch_every=self.settings.interval * 0.8,
                previews=previews,
                status_url=self.settings.gateway_url,
                sweeper=runtime.build_orphan_sweeper(engine),
                housekeeping=runtime.build_housekeeping(engine),
            )
            loop = Loop(the_pass, self.settings.interval, state_dir=self.settings.state_dir, on_wake=the_pass.request_fetch)
            loops.append(loop)
            if hasattr(source, "watch"):
                loop.add_watcher(source.watch(lambda: loop.wake("file saved") if loop else None, loop.stop_event))
            loop.start()
            while not self.stop.is_set() and not self.leadership.lost.is_set():
                sync.tick()
                self.leadership.lost.wait(SYNC_EVERY)
            if self.leadership.lost.is_set():
                say("tidegate up: lost the leadership; stopping the loop and standing by")
        finally:
            if self.plane is not None:
                self.plane.stand_by()
            if loop is not None:
                loop.shutdown()
            engine.close()
            if not self.leadership.lost.is_set():
                sync.tick()  # the last routes out before resigning (fenced: refused if not ours)


def read_shared(settings: Settings, folder: Path) -> Settings:
    """`ps` with etcd: the shared documents copied into `folder` (a private temp dir), and settings
    that read them there. Raises EtcdError/StateError when etcd cannot be read."""
    assert settings.etcd is not None
    store = EtcdStore(EtcdClient(settings.etcd))
    for name in (*PULLED_DOCS, *store.list(PREVIEWS_PREFIX)):
        body = store.get(name)
        if body is not None:
            path = folder / name
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomic(path, body, mode=0o600)
    return replace(settings, state_dir=folder)


def send_shared_signal(settings: Settings, kind: str, payload: dict[str, Any]) -> str:
    """`stop`/`start` with etcd: a signal under `signals/` for whichever `up` leads (never an engine
    opened here: only the leader acts). Returns who leads, for the message."""
    assert settings.etcd is not None
    leader = post_signal(EtcdStore(EtcdClient(settings.etcd)), kind, payload)
    return leader or "no leader right now; the next one"
