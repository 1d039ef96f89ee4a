"""What `tidegate up` tells a newcomer once services answer: URLs, a token, a curl and an SDK line.

Printed from the published routes (the same file the gateway serves), so every URL and model name
shown is one the gateway really routes. Commands are spelled so they work when pasted: the
`tidegate` and `python` that exist here, and the state dir when it is not the default.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from reconciler.cli.output import say
from reconciler.cli.settings import Settings
from tidegate.routes_io import read_snapshot
from tidegate.state_dir import choose_state_dir


def cli_hint(settings: Settings) -> str:
    """How to call tidegate from another terminal so it finds this state dir."""
    exe = "tidegate"
    if shutil.which("tidegate") is None:
        local = Path(sys.executable).parent / "tidegate"
        exe = str(local) if local.exists() else f"{sys.executable} -m reconciler.cli.main"
    default = choose_state_dir(None, os.environ).resolve()
    return exe if settings.state_dir == default else f"TIDEGATE_STATE={settings.state_dir} {exe}"


def print_next_steps(settings: Settings, gateway: bool, only: frozenset[str] | None = None) -> None:
    """What a newcomer does next: each service URL, a token, a curl and an OpenAI SDK line.
    With `only` (services that became ready after the first announcement): just their lines."""
    routes = read_snapshot(settings.state_dir)
    tg = cli_hint(settings)
    lines = ["", "Services:"] if only is None else []
    if not routes.services and only is None:
        lines.append("  (none yet: push a .dstack.yml to the repo; `tidegate ps` shows progress)")
    for name, route in sorted(routes.services.items()):
        if only is not None and name not in only:
            continue
        ready = len([u for u in route.upstreams if not u.draining])
        model = f"  model {route.model.name}" if route.model else ""
        prefix = "  " if only is None else "Ready: "
        lines.append(f"{prefix}{name:<16} {settings.service_url(name)}  ({ready} ready){model}")
    if gateway and only is None:
        base = settings.gateway_url
        lines += [
            "",
            "Next:",
            f"  {tg} ps                                   # status of every service",
            f'  export TOKEN=$({tg} token create me-$(date +%s))   # a new API token (shown once)',
        ]
        # Prefer a model behind auth: that is the path most users take.
        with_model = sorted((r for r in routes.services.values() if r.model), key=lambda r: (not r.auth, r.name))
        if with_model and with_model[0].model is not None:
            m = with_model[0].model.name
            py = "python" if shutil.which("python") == sys.executable else sys.executable  # the one with openai
            body = json.dumps({"model": m, "messages": [{"role": "user", "content": "Hello!"}]})
            # With HTTPS, the seed's form: https://gateway.<domain>, no /v1 (served at both).
            api = settings.service_url("gateway") if settings.gateway_options.get("https_listen") else f"{base}/v1"
            lines += [
                f"  curl -s {api}/chat/completions -H \"Authorization: Bearer $TOKEN\" "
                f"-H 'Content-Type: application/json' -d '{body}'",
                f"  {py} -c \"import os, openai; c = openai.OpenAI(base_url='{api}', api_key=os.environ['TOKEN']); "
                f"print(c.chat.completions.create(model='{m}', messages=[{{'role': 'user', 'content': 'Hello!'}}])"
                f".choices[0].message.content)\"",
            ]
        for name in sorted(routes.services)[:1]:
            lines.append(f"  curl -s -H \"Authorization: Bearer $TOKEN\" {base}/services/{name}/")
        lines.append(f"  {tg} token create admin-$(date +%s) --admin   # then log in at {base}/ui/ (dashboard)")
    say("\n".join(lines))
