"""An aiohttp upstream for edge cases the example servers do not cover: gated SSE, WebSocket echo,
held requests (to pin load on one replica) and hop-by-hop response headers."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web


@dataclass
class Gates:
    release_sse: threading.Event = field(default_factory=threading.Event)
    release_hold: threading.Event = field(default_factory=threading.Event)
    holding: int = 0
    hits: int = 0


class AioUpstream:
    def __init__(self) -> None:
        self.gates = Gates()
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    async def _wait(self, event: threading.Event) -> None:
        while not event.is_set():
            await asyncio.sleep(0.01)

    async def sse(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: first\n\n")
        await self._wait(self.gates.release_sse)
        await resp.write(b"data: last\n\n")
        await resp.write_eof()
        return resp

    async def hold(self, request: web.Request) -> web.Response:
        self.gates.holding += 1
        try:
            await self._wait(self.gates.release_hold)
        finally:
            self.gates.holding -= 1
        return web.json_response({"held": True})

    async def hit(self, request: web.Request) -> web.Response:
        self.gates.hits += 1
        return web.json_response({"port": self.port}, headers={"Keep-Alive": "timeout=5", "X-Kept": "yes"})

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse(protocols=("echo",))
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == WSMsgType.TEXT:
                await sock.send_str("echo:" + msg.data)
            elif msg.type == WSMsgType.BINARY:
                await sock.send_bytes(msg.data[::-1])
        return sock

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_get("/sse", self.sse)
        app.router.add_get("/hold", self.hold)
        app.router.add_get("/hit", self.hit)
        app.router.add_get("/ws", self.ws)
        self._runner = web.AppRunner(app, access_log=None)
        self.loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        self.loop.run_forever()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> AioUpstream:
        self.thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        self.gates.release_sse.set()
        self.gates.release_hold.set()

        async def cleanup() -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
