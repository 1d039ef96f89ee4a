"""Webhook receivers that wake the reconciler: GitHub push events and a plain token-guarded hook.

`POST /hooks/github` checks `X-Hub-Signature-256` (HMAC-SHA256 of the raw body with the secret
from settings, compared in constant time) and drops a `wake` signal naming the ref (a `pull_request`
event's signal also carries the payload's `pull_request` object); a bad or missing signature is
401, and without a configured secret the hook is disabled (404).
`POST /hooks/git` needs a gateway bearer token. Neither does any git work itself.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import TYPE_CHECKING, Any

from gateway.asgi import Receive, Scope, Send, read_body, send_json
from tidegate.signals import send_signal

if TYPE_CHECKING:
    from gateway.core import Gateway

MAX_HOOK_BODY = 5 * 1024 * 1024


def valid_signature(secret: str, body: bytes, header: str | None) -> bool:
    if not header or not header.startswith("sha256="):
        return False
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header.strip())


async def handle(gw: Gateway, scope: Scope, receive: Receive, send: Send, path: str) -> None:
    from gateway.core import GatewayError, _header

    if scope["method"] != "POST":
        raise GatewayError(405, "webhooks take POST", code="method_not_allowed")
    if path == "/hooks/github":
        secret = gw.settings.webhook_secret
        if not secret:
            raise GatewayError(404, "the GitHub webhook is disabled (no webhook secret configured)", code="not_found")
        body = await read_body(receive, MAX_HOOK_BODY)
        sig = _header(scope, b"x-hub-signature-256")
        if not valid_signature(secret, body, sig.decode("latin-1") if sig else None):
            raise GatewayError(401, "bad or missing X-Hub-Signature-256", "authentication_error", "bad_signature")
        event = (_header(scope, b"x-github-event") or b"").decode("latin-1")
        payload: dict[str, Any] = {"source": "github", "event": event}
        try:
            data = json.loads(body) if body else {}
        except ValueError:
            data = {}
        if isinstance(data, dict):
            if isinstance(data.get("ref"), str):
                payload["ref"] = data["ref"]
            pr = data.get("pull_request")
            if isinstance(pr, dict) and isinstance(pr.get("number"), int):
                payload["pr"] = pr["number"]
                # The PR object itself (state, head sha, labels, fork): the reconciler saves it so
                # previews need no API call to learn that a PR closed or comes from a fork.
                payload["pull_request"] = pr
        send_signal(gw.settings.state_dir, "wake", payload)
        await send_json(send, 202, {"status": "accepted"})
    elif path == "/hooks/git":
        gw.check_token(scope)
        await read_body(receive, MAX_HOOK_BODY)
        send_signal(gw.settings.state_dir, "wake", {"source": "hook"})
        await send_json(send, 202, {"status": "accepted"})
    else:
        raise GatewayError(404, f"no hook at {path}", code="not_found")
