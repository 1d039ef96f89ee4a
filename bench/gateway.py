#!/usr/bin/env python3
"""Gateway benchmark: the same loopback load, direct to an upstream, through nginx, through the gateway.

Three request kinds - a small-JSON GET, a chat-completion POST and a short SSE stream - are sent
with wrk (falling back to a bounded aiohttp load generator when wrk is absent) at 32 connections,
plus one connection for light-load latency, and for SSE the time to the first chunk of a stream
whose second chunk comes 50 ms later. Proxy CPU per request comes from psutil's cpu_times of the
proxy process and its children. The upstream is a tiny raw-asyncio HTTP/1.1 server in its own
process (the stdlib example servers would be the bottleneck). nginx is measured only when the
`nginx` binary exists. Whole run: well under two minutes.

    .venv/bin/python bench/gateway.py [--duration 4] [--connections 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHAT_REQUEST = json.dumps(
    {"model": "bench", "messages": [{"role": "user", "content": "Say hello in five words."}], "max_tokens": 16}
)
CHAT_RESPONSE = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": "bench",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there, how are you?"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
    }
).encode()
SMALL = b'{"status":"ok"}'
SSE_EVENTS = [b'data: {"choices":[{"delta":{"content":"tok%d"}}]}\n\n' % i for i in range(5)] + [b"data: [DONE]\n\n"]


# --------------------------------------------------------------------------------------------
# The upstream: raw asyncio, keep-alive, Content-Length or chunked.
# --------------------------------------------------------------------------------------------
def _response(status: bytes, body: bytes, ctype: bytes) -> bytes:
    return b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


class UpstreamProtocol(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end == -1:
                return
            head = self.buf[:end]
            m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            length = int(m.group(1)) if m else 0
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length :]
            target = head.split(b" ", 2)[1]
            if target.startswith(b"/v1/chat/completions"):
                self.t.write(_response(b"200 OK", CHAT_RESPONSE, b"application/json"))
            elif target.startswith(b"/sse-slow"):
                self.t.write(SSE_HEAD + _chunk(SSE_EVENTS[0]))
                asyncio.get_running_loop().call_later(0.05, self._sse_rest)
            elif target.startswith(b"/sse"):
                self.t.write(SSE_HEAD + b"".join(_chunk(e) for e in SSE_EVENTS) + b"0\r\n\r\n")
            else:
                self.t.write(_response(b"200 OK", SMALL, b"application/json"))

    def _sse_rest(self) -> None:
        if not self.t.is_closing():
            self.t.write(b"".join(_chunk(e) for e in SSE_EVENTS[1:]) + b"0\r\n\r\n")


def run_upstream(port: int) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(UpstreamProtocol, "127.0.0.1", port, backlog=1024)
        await server.serve_forever()

    asyncio.run(main())


# --------------------------------------------------------------------------------------------
# Load generation and measurement.
# --------------------------------------------------------------------------------------------
@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return float("nan")
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def run_wrk(url: str, headers: dict[str, str], post: str | None, conns: int, duration: float, workdir: Path) -> Result:
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{duration:g}s", "--latency"]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    if post is not None:
        script = workdir / "post.lua"
        script.write_text(
            'wrk.method = "POST"\nwrk.body = ' + json.dumps(post) + '\nwrk.headers["Content-Type"] = "application/json"\n'
        )
        cmd += ["-s", str(script)]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    # Anchored: "87.50%" in the thread-stats table must not be read as the 50th percentile.
    p50 = _ms(re.search(r"(?m)^\s+50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"(?m)^\s+99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return Result(rps, p50, p99, total)


async def _aio_load(url: str, headers: dict[str, str], post: str | None, conns: int, duration: float) -> Result:
    import aiohttp

    lat: list[float] = []
    stop_at = time.perf_counter() + duration

    async def worker(session: aiohttp.ClientSession) -> None:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            if post is None:
                async with session.get(url, headers=headers) as r:
                    await r.read()
            else:
                async with session.post(url, data=post, headers={**headers, "Content-Type": "application/json"}) as r:
                    await r.read()
            lat.append(time.perf_counter() - t0)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(conns)))
        elapsed = time.perf_counter() - started
    lat.sort()
    return Result(len(lat) / elapsed, lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000, len(lat))


def load(url: str, headers: dict[str, str], post: str | None, conns: int, duration: float, workdir: Path) -> Result:
    if shutil.which("wrk"):
        return run_wrk(url, headers, post, conns, duration, workdir)
    return asyncio.run(_aio_load(url, headers, post, conns, duration))


def cpu_seconds(pid: int) -> float:
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


async def _first_chunk_ms(port: int, host: str, headers: dict[str, str], samples: int) -> float:
    times = []
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    for _ in range(samples):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        t0 = time.perf_counter()
        writer.write(f"GET /sse-slow HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())
        buf = b""
        while b"tok0" not in buf:
            buf += await reader.read(4096)
        times.append((time.perf_counter() - t0) * 1000)
        writer.close()
    return statistics.median(times)


# --------------------------------------------------------------------------------------------
# Targets.
# --------------------------------------------------------------------------------------------
@dataclass
class Target:
    name: str
    port: int
    pid: int | None  # whose CPU is the proxy's (None: direct)
    host: str
    headers: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None


def start_nginx(upstream_port: int, workdir: Path) -> Target | None:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        return None
    port = free_port()
    prefix = workdir / "nginx"
    (prefix / "logs").mkdir(parents=True)
    conf = prefix / "nginx.conf"
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf.write_text(
        f"""{user}worker_processes 2;
error_log {prefix}/logs/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body; proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fcgi; uwsgi_temp_path {prefix}/uwsgi; scgi_temp_path {prefix}/scgi;
  upstream up {{ server 127.0.0.1:{upstream_port}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
"""
    )
    proc = subprocess.Popen([nginx, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"], stderr=subprocess.DEVNULL)
    wait_port(port)
    return Target("nginx (2 workers)", port, proc.pid, "bench.localhost", {}, proc)


def start_gateway(upstream_port: int, workers: int, workdir: Path) -> Target:
    from gateway.access.tokens import create_token
    from tidegate.routes import RoutesSnapshot, ServiceRoute, Upstream
    from tidegate.routes_io import write_snapshot

    state = workdir / f"state-{workers}"
    write_snapshot(
        state,
        RoutesSnapshot(
            serial=1,
            services={
                "bench": ServiceRoute(
                    name="bench", host="bench.localhost",
                    upstreams=(Upstream(replica_id="bench-0", url=f"http://127.0.0.1:{upstream_port}"),),
                )
            },
        ),
    )
    token = create_token(state, "bench")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler.cli.main", "gateway", "--state", str(state), "--listen", f"127.0.0.1:{port}",
         "--workers", str(workers), "--no-access-log"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_port(port)
    time.sleep(1.0 if workers > 1 else 0.3)  # let every worker finish starting
    return Target(f"tidegate gateway ({workers} worker{'s' if workers > 1 else ''})", port, proc.pid,
                  "bench.localhost", {"Authorization": f"Bearer {token}"}, proc)


def stop_target(t: Target) -> None:
    if t.proc is None:
        return
    t.proc.send_signal(signal.SIGTERM if "nginx" not in t.name else signal.SIGQUIT)
    try:
        t.proc.wait(10)
    except subprocess.TimeoutExpired:
        t.proc.kill()
        t.proc.wait()


KINDS = (("small JSON GET", "/small", None), ("chat POST", "/v1/chat/completions", CHAT_REQUEST), ("SSE (6 events)", "/sse", None))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per loaded run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--upstream", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.upstream:
        run_upstream(args.upstream)
        return 0

    tool = "wrk" if shutil.which("wrk") else "aiohttp load generator (wrk not installed)"
    workdir = Path(tempfile.mkdtemp(prefix="tidegate-bench-"))
    up_port = free_port()
    upstream = subprocess.Popen([sys.executable, __file__, "--upstream", str(up_port)])
    targets: list[Target] = []
    notes: list[str] = []
    rows: list[tuple[str, str, Result, float | None]] = []
    light: dict[str, float] = {}
    ttfb: dict[str, float] = {}
    try:
        wait_port(up_port)
        targets.append(Target("direct (upstream)", up_port, None, "bench.localhost", {}))
        ng = start_nginx(up_port, workdir)
        if ng is None:
            notes.append("nginx: skipped (no nginx binary; `apt-get install nginx` to include it)")
        else:
            targets.append(ng)
        for workers in (1, 2):
            targets.append(start_gateway(up_port, workers, workdir))
        notes.append("LiteLLM proxy: not measured (optional peer, not installed)")
        for t in targets:
            headers = {"Host": t.host, **t.headers}
            base = f"http://127.0.0.1:{t.port}"
            for kind, path, body in KINDS:
                before = cpu_seconds(t.pid) if t.pid else 0.0
                res = load(base + path, headers, body, args.connections, args.duration, workdir)
                cpu = (cpu_seconds(t.pid) - before) / max(res.requests, 1) * 1e6 if t.pid else None
                rows.append((t.name, kind, res, cpu))
            light[t.name] = load(base + "/v1/chat/completions", headers, CHAT_REQUEST, 1, min(args.duration, 2.0), workdir).p50_ms
            ttfb[t.name] = asyncio.run(_first_chunk_ms(t.port, t.host, t.headers, 20))
    finally:
        for t in targets:
            stop_target(t)
        upstream.terminate()
        upstream.wait()
        shutil.rmtree(workdir, ignore_errors=True)

    cpu_count = psutil.cpu_count()
    load_avg = os.getloadavg()[0]
    print(
        f"\nGateway benchmark - loopback, {cpu_count} CPUs (load average {load_avg:.1f} at the end), load by {tool}, "
        f"{args.connections} connections, {args.duration:g} s per run"
    )
    print(f"{'target':<30} {'request':<16} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'proxy CPU us/req':>17}")
    for name, kind, res, cpu in rows:
        cpu_s = f"{cpu:.0f}" if cpu is not None else "-"
        print(f"{name:<30} {kind:<16} {res.rps:>9.0f} {res.p50_ms:>8.2f} {res.p99_ms:>8.2f} {cpu_s:>17}")
    print(f"\n{'target':<30} {'chat POST p50 @1 conn (ms)':>27} {'added vs direct (ms)':>21} {'SSE first chunk p50 (ms)':>25}")
    direct = light.get("direct (upstream)", 0.0)
    for name in light:
        print(f"{name:<30} {light[name]:>27.3f} {light[name] - direct:>21.3f} {ttfb[name]:>25.2f}")
    for note in notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
