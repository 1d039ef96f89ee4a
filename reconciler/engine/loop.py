"""The reconcile loop: one APScheduler job that runs passes on an interval, and everything that wakes it.

Reconcile is level-triggered, so the loop never cares *why* it runs: a timer tick, a new git
revision, a file in `<state>/signals/` (the gateway's push webhook, a request held for a service at
zero replicas, `tidegate stop/start` from another terminal), or SIGHUP all call `wake()`, which
moves the one job's next run to now. The job guards itself (one pass at a time; APScheduler's
`max_instances` is 2 so a wake-up as a job returns is not dropped) and has `coalesce=True`: passes
never overlap and a burst of wake-ups collapses into one pass. A wake-up that arrives while a pass
runs is remembered and triggers one more pass right after it (APScheduler would otherwise skip it).

Signals are drained here and queued for the pass (`take_signals()`), so commands like stop/start
are applied by the same thread that reconciles — passes never run at once. (The engine's
workers apply services' steps beside the pass, under the engine's lock: reconciler.engine.dispatch;
each wakes the loop with `fetch=False` when its work settles.)

SIGINT/SIGTERM stop the scheduler after the running pass finishes and return from `run()`; replicas
keep running (the next start adopts them).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from reconciler.source.checkout import watch_folder
from tidegate.signals import drain_signals, signals_folder

log = logging.getLogger("tidegate.loop")

JOB_ID = "reconcile"
# The soonest a pass may ask for the next one: readiness probes of a service with requests held
# at zero run every ~100 ms (reconciler.engine.observe.READY_FAST).
MIN_DELAY = 0.05


# What a pass returns: seconds until it wants to run again (a roll waiting for readiness wants a
# quick look), or None for the normal interval.
PassFn = Callable[[], "float | None"]


class Loop:
    def __init__(
        self,
        pass_fn: PassFn,
        interval: float,
        jitter: float | None = None,
        state_dir: Path | None = None,
        on_wake: Callable[[str], None] | None = None,
    ) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        self._pass_fn = pass_fn
        self.interval = interval
        self.jitter = interval * 0.1 if jitter is None else jitter
        self.state_dir = state_dir
        self._on_wake = on_wake
        self._scheduler = BackgroundScheduler(timezone=UTC, job_defaults={"misfire_grace_time": None})
        self._lock = threading.Lock()
        self._pending = False  # a wake-up arrived during a pass
        self._running = False
        self._signals: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.passes = 0
        self.last_error: str | None = None

    # --- the job ---------------------------------------------------------------------------

    def _job(self) -> None:
        # Wake-ups during a pass run the next pass inside this same job invocation: rescheduling
        # a job that is still running could be skipped by APScheduler.
        delay: float | None = None
        with self._lock:
            if self._running:
                # A wake-up landed while the previous job was returning (APScheduler still counted
                # it): that job sees `_pending` and runs one more pass, or has already finished
                # and we are the pass. Never both, never neither.
                self._pending = True
                return
            self._running = True
        while True:
            with self._lock:
                self._running = True
                self._pending = False
            try:
                delay = self._pass_fn()
                self.last_error = None
            except Exception as e:  # the loop boundary: log, keep going on the next tick
                delay = None
                error = f"{type(e).__name__}: {e}"
                if error != self.last_error:  # once per distinct error, not once per pass
                    log.exception("reconcile pass failed")
                else:
                    log.debug("reconcile pass failed again: %s", error)
                self.last_error = error
            self.passes += 1
            with self._lock:
                again = self._pending and not self._stop.is_set()
                if not again:
                    self._running = False
            if not again:
                break
        # A pass may ask to run sooner than the interval (readiness of a roll, liveness re-probes),
        # never later: the interval stays the bound between passes (and fetches).
        if delay is not None and delay < self.interval and not self._stop.is_set():
            self._reschedule(max(delay, MIN_DELAY))

    def _reschedule(self, seconds: float) -> None:
        job = self._scheduler.get_job(JOB_ID)
        if job is not None:
            job.modify(next_run_time=datetime.now(UTC) + timedelta(seconds=max(0.0, seconds)))

    def wake(self, reason: str = "wake", fetch: bool = True) -> None:
        """Run a pass now (or right after the running one). Safe from any thread. `fetch` False:
        an internal event (a worker's work settled) that needs no `on_wake` (no git fetch)."""
        log.debug("wake-up: %s", reason)
        if self._stop.is_set():
            return  # shutting down (a worker settling as `up` stops): no pass to run
        if self._on_wake is not None and fetch:
            self._on_wake(reason)
        with self._lock:
            if self._running:
                self._pending = True
                return
        self._reschedule(0.0)

    # --- signals from other processes ------------------------------------------------------

    def drain(self) -> None:
        """Move pending signal files into the queue and wake the loop if there were any."""
        if self.state_dir is None:
            return
        items = drain_signals(self.state_dir)
        if items:
            with self._lock:
                self._signals.extend(items)
            self.wake("signal: " + ",".join(str(i.get("kind")) for i in items))

    def take_signals(self) -> list[dict[str, Any]]:
        """Signals drained since the last call (the pass applies stop/start/demand from these)."""
        if self.state_dir is not None:
            items = drain_signals(self.state_dir)
            with self._lock:
                self._signals.extend(items)
        with self._lock:
            out, self._signals = self._signals, []
        return out

    # --- lifecycle -------------------------------------------------------------------------

    def start(self, first_run: bool = True) -> None:
        self._scheduler.add_job(
            self._job,
            "interval",
            seconds=self.interval,
            jitter=self.jitter,
            id=JOB_ID,
            # 2, not 1: a wake-up in the instant a job returns would be skipped ("maximum number
            # of running instances reached") and lost; `_job` itself lets one pass run at a time.
            max_instances=2,
            coalesce=True,
            next_run_time=datetime.now(UTC) if first_run else None,
        )
        self._scheduler.start()
        if self.state_dir is not None:
            folder = signals_folder(self.state_dir)  # 0700
            self._threads.append(watch_folder(folder, self.drain, self._stop, name="tidegate-signals", poll_every=1.0))
            self.drain()  # files written while nobody was watching

    def add_watcher(self, thread: threading.Thread) -> None:
        self._threads.append(thread)

    @property
    def stop_event(self) -> threading.Event:
        return self._stop

    def shutdown(self) -> None:
        """Stop scheduling; wait for the running pass. Replicas are left as they are."""
        self._stop.set()
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)
        for t in self._threads:
            t.join(timeout=2)

    def run(self, install_signals: bool = True) -> None:
        """Block until SIGINT/SIGTERM (or `stop_event`), with SIGHUP waking the loop."""
        previous: dict[signal.Signals, Any] = {}
        if install_signals and threading.current_thread() is threading.main_thread():

            def on_term(signum: int, frame: FrameType | None) -> None:
                log.info("received %s: shutting down, replicas keep running", signal.Signals(signum).name)
                self._stop.set()

            def on_hup(signum: int, frame: FrameType | None) -> None:
                self.wake("SIGHUP")

            for sig, handler in ((signal.SIGINT, on_term), (signal.SIGTERM, on_term), (signal.SIGHUP, on_hup)):
                previous[sig] = signal.signal(sig, handler)
        try:
            while not self._stop.wait(0.5):
                pass
        finally:
            self.shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

