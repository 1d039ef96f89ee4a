"""Chat templates rendered in a small pool of worker processes, never on the event loop.

A template comes from a service config or a model repository, so it is not trusted: a nested
`range` loop ran 9 s on the event loop and stalled every service; `{{ 'x' * N }}` took the
process to 2 GB. Measured (bench/template_render.py): rendering on the loop delays every other
request by the whole render; in a thread it still takes the GIL from the loop (and a thread
cannot be stopped); jinja2's sandbox with a budget (chat_template.BudgetedSandbox) stops output bombs and
call-heavy loops, but not a loop that makes no call. So each render goes to a worker process:
- the loop only writes a request to a pipe and waits for its fd (~0.1-0.3 ms per render);
- a worker that is not done `timeout` s after the request is killed and replaced: the client
  gets 400, and nothing else waited on it;
- each worker has an address-space limit (`WORKER_MEMORY`), so a memory bomb is a MemoryError
  or the worker's death (400 again), never the gateway's;
- inside, the render runs under the budget (time and output size), which ends most hostile
  templates cleanly without losing the worker.
At most `workers` renders run at once; more wait their turn, and past a few timeouts' wait the
request is a 503 (no renderer freed up: not the client's fault).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from gateway.api import chat_template

log = logging.getLogger("tidegate.gateway")

WORKER_MEMORY = 1024 * 1024 * 1024
STARTUP = 10.0  # a fresh worker's interpreter start, on a loaded machine


@dataclass(frozen=True)
class RenderRequest:
    template: str
    messages: list[dict[str, str]]
    bos_token: Any
    eos_token: Any
    max_output: int
    seconds: float


def _serve(conn: Connection) -> None:
    """A worker's loop: one request in, ("ok", prompt) or ("error", message) out."""
    import resource

    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY, WORKER_MEMORY))
    while True:
        try:
            req: RenderRequest = conn.recv()
        except (EOFError, OSError):
            return
        try:
            budget = chat_template.Budget(req.max_output, req.seconds, time.monotonic)
            out: tuple[str, str] = ("ok", chat_template.render_prompt(req.template, req.messages, req.bos_token, req.eos_token, budget))
        except chat_template.TranslationError as e:
            out = ("error", str(e))
        except MemoryError:
            out = ("error", "chat template used too much memory")
        except Exception as e:  # a template can raise anything; it is the client's error
            out = ("error", f"chat template failed: {type(e).__name__}")
        try:
            conn.send(out)
        except (OSError, ValueError):
            return


class RenderBusy(Exception):
    """Every renderer stayed busy past the wait (answered 503: not the client's fault)."""


class _Worker:
    def __init__(self, ctx: Any) -> None:
        self.conn, child = multiprocessing.Pipe(duplex=True)
        self.proc = ctx.Process(target=_serve, args=(child,), name="tidegate-render", daemon=True)
        self.proc.start()
        child.close()
        self.warm = False  # has answered once (its interpreter and jinja2 are loaded)

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.kill()
        with contextlib.suppress(Exception):
            self.conn.close()


class RenderPool:
    def __init__(self, workers: int, timeout: float, max_output: int) -> None:
        self.size = max(1, workers)
        self.timeout = timeout
        self.max_output = max_output
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._slots: asyncio.Semaphore | None = None
        self._ctx = multiprocessing.get_context("spawn")  # never fork a process that has threads

    async def render(self, template: str, messages: Any, bos_token: Any, eos_token: Any) -> str:
        """The prompt, or `chat_template.TranslationError` (the client's 400): a bad template, or one over
        its time, output or memory budget; `RenderBusy` when no renderer freed up in time."""
        req = RenderRequest(template, chat_template.normalize_messages(messages), bos_token, eos_token, self.max_output, self.timeout)
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.size)
        try:
            # A hostile render holds a slot at most `timeout` (then its worker is killed).
            async with asyncio.timeout(self.timeout * 4 + STARTUP):
                await self._slots.acquire()
        except TimeoutError as e:
            raise RenderBusy("every chat-template renderer is busy; try again") from e
        try:
            kind, value = await self._run(req)
        finally:
            self._slots.release()
        if kind != "ok":
            raise chat_template.TemplateRenderError(value)
        return value

    async def _run(self, req: RenderRequest) -> tuple[str, str]:
        worker = self._idle.pop() if self._idle else self._spawn()
        try:
            worker.conn.send(req)
            # A fresh worker loads its interpreter first: that time is not the template's.
            if not await self._readable(worker.conn, self.timeout + (0.0 if worker.warm else STARTUP)):
                raise chat_template.TemplateLimit(f"chat template took over {self.timeout:g} s")
            try:
                kind, value = worker.conn.recv()
            except (EOFError, OSError) as e:
                raise chat_template.TemplateRenderError("chat template used too much memory (its renderer died)") from e
        except BaseException:
            self._all.discard(worker)
            worker.kill()
            self._idle.append(self._spawn())  # its replacement starts now, not on the next render
            await asyncio.to_thread(worker.proc.join, 5)
            raise
        worker.warm = True
        self._idle.append(worker)
        return str(kind), str(value)

    def _spawn(self) -> _Worker:
        worker = _Worker(self._ctx)
        self._all.add(worker)
        return worker

    @staticmethod
    async def _readable(conn: Connection, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        fd = conn.fileno()
        loop.add_reader(fd, lambda: None if fut.done() else fut.set_result(None))
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            loop.remove_reader(fd)

    def close(self) -> None:
        for worker in self._all:
            worker.kill()
        self._all.clear()
        self._idle.clear()
