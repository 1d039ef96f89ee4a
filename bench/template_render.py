#!/usr/bin/env python3
"""How to render untrusted chat templates: on the loop, in a thread, sandbox budget, process pool.

For each mechanism: the cost of a normal render (median of 200), and, while one hostile template
renders, the worst delay of a 1 ms timer on the same event loop (what every other request would
wait) and how long until the hostile render is answered. The hostile templates: a silent nested
loop (no call inside, ~3 s of work here, unbounded in general) and an output bomb ('x' * 10^8).

    .venv/bin/python bench/template_render.py
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.api import chat_template  # noqa: E402
from gateway.api.render import RenderPool  # noqa: E402

NORMAL = (
    "{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}[INST] {{ m.content }} [/INST]"
    "{% else %}{{ m.content }}{{ eos_token }}{% endif %}{% endfor %}"
)
MESSAGES = [{"role": "user", "content": "Hello, who are you?"}, {"role": "assistant", "content": "A model."},
            {"role": "user", "content": "Say hello in five words."}]
# No call inside the loops (the list is made once): nothing for a sandbox hook to see.
SPIN = "{% set r = range(4000)|list %}{% for i in r %}{% for j in r %}{% endfor %}{% endfor %}done"
BOMB = "{{ 'x' * 100000000 }}"

Render = Callable[[str], Awaitable[str]]


def budget() -> chat_template.Budget:
    return chat_template.Budget(1024 * 1024, 1.0, time.monotonic)


async def measure(render: Render, template: str) -> tuple[float, float, str]:
    """(max timer delay ms, time to answer s, outcome) for one render of `template`."""
    loop = asyncio.get_running_loop()
    worst = 0.0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal worst
        while not stop.is_set():
            t0 = loop.time()
            await asyncio.sleep(0.001)
            worst = max(worst, loop.time() - t0 - 0.001)

    tick = asyncio.ensure_future(ticker())
    await asyncio.sleep(0.01)
    t0 = time.perf_counter()
    try:
        out = await render(template)
        outcome = f"rendered {len(out)} chars"
    except chat_template.TranslationError as e:
        outcome = f"refused: {e}"
    took = time.perf_counter() - t0
    stop.set()
    await tick
    return worst * 1000, took, outcome


async def main() -> None:
    pool = RenderPool(2, 1.0, 1024 * 1024)

    async def inline(t: str) -> str:
        return chat_template.render_prompt(t, MESSAGES, "<s>", "</s>")

    async def inline_budget(t: str) -> str:
        return chat_template.render_prompt(t, MESSAGES, "<s>", "</s>", budget())

    async def thread(t: str) -> str:
        return await asyncio.to_thread(chat_template.render_prompt, t, MESSAGES, "<s>", "</s>", budget())

    async def processes(t: str) -> str:
        return await pool.render(t, MESSAGES, "<s>", "</s>")

    mechanisms: list[tuple[str, Render]] = [
        ("on the loop, no budget", inline), ("on the loop, budgeted sandbox", inline_budget),
        ("thread, budgeted sandbox", thread), ("process pool + budget", processes),
    ]
    await processes(NORMAL)  # start the workers
    print(f"load average {os.getloadavg()[0]:.1f}; 2 render workers; budget 1 s / 1 MiB")
    print(f"{'mechanism':32} {'normal render':>14} {'loop CPU':>9} {'spin: loop delay':>17} {'spin: answered':>15} {'bomb: loop delay':>17} {'bomb: answered':>15}")
    async def idle(t: str) -> str:
        await asyncio.sleep(1.0)
        return ""

    delay, _, _ = await measure(idle, "")
    print(f"{'(nothing rendering: noise floor)':32} {'':>14} {'':>9} {delay:14.1f} ms")
    for name, render in mechanisms:
        costs = []
        cpu0 = time.process_time()
        for _ in range(200):
            t0 = time.perf_counter()
            await render(NORMAL)
            costs.append(time.perf_counter() - t0)
        cpu = (time.process_time() - cpu0) / 200  # this process only: a worker's CPU is not the loop's
        row = [f"{statistics.median(costs) * 1e6:11.0f} us", f"{cpu * 1e6:6.0f} us"]
        for template in (SPIN, BOMB):
            delay, took, outcome = await measure(render, template)
            row += [f"{delay:14.1f} ms", f"{took:9.2f} s"]
            print(f"    {name} / {'spin' if template is SPIN else 'bomb'}: {outcome[:90]}", file=sys.stderr)
        print(f"{name:32} {row[0]:>14} {row[1]:>9} {row[2]:>17} {row[3]:>15} {row[4]:>17} {row[5]:>15}")
    pool.close()


if __name__ == "__main__":
    asyncio.run(main())
