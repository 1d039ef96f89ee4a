"""Webhook receivers that wake the reconciler: GitHub push events and a plain token-guarded hook.

`POST /hooks/github` checks `X-Hub-Signature-256` (HMAC-SHA256 of the raw body with the secret
from settings, compared in constant time) and drops a `wake` signal naming the ref (and, for a
`pull_request` event, the PR number); a bad or missing signature is 401, and without a configured
secret the hook is disabled (404). A signal file carries no trust (anyone able to write the signal
folder could forge one), so what the verified payload says about a PR (open/closed, fork, labels)
goes only to `Forwarder.verified_events`, a callback the in-process reconciler (`tidegate up`) sets;
a standalone gateway has none, and the reconciler asks the GitHub API instead. A delivery seen before (same
`X-GitHub-Delivery`, or same signed body) is answered 200 and ignored (`gateway.webhooks.deliveries`).
`POST /hooks/git` needs a gateway bearer token. Neither does any git work itself. Bodies are
capped at `MAX_HOOK_BODY` (GitHub's own cap on webhook payloads is 25 MB, but a push event is
kilobytes; 413 past it).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from typing import Any

from gateway.asgi import BadJSON, Receive, Scope, Send, header, loads, send_json
from gateway.errors import GatewayError
from gateway.forward import Forwarder
from tidegate.signals import send_signal

log = logging.getLogger("tidegate.gateway")

MAX_HOOK_BODY = 5 * 1024 * 1024


def valid_signature(secret: str, body: bytes, sig: bytes | None) -> bool:
    """Constant-time check of `sha256=<hex>`; any bytes (not only ASCII) are simply wrong."""
    if not sig or not sig.startswith(b"sha256="):
        return False
    expected = b"sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest().encode()
    return hmac.compare_digest(expected, sig.strip())


async def handle(fw: Forwarder, scope: Scope, receive: Receive, send: Send, path: str) -> None:
    if scope["method"] != "POST":
        raise GatewayError(405, "webhooks take POST", code="method_not_allowed")
    if path == "/hooks/github":
        await _github(fw, scope, receive, send)
    elif path == "/hooks/git":
        fw.check_token(scope)
        await fw.read_request_body(scope, receive, MAX_HOOK_BODY)
        send_signal(fw.settings.state_dir, "wake", {"source": "hook"})
        await send_json(send, 202, {"status": "accepted"})
    else:
        raise GatewayError(404, f"no hook at {path}", code="not_found")


async def _github(fw: Forwarder, scope: Scope, receive: Receive, send: Send) -> None:
    secret = fw.settings.webhook_secret
    if not secret:
        raise GatewayError(404, "the GitHub webhook is disabled (no webhook secret configured)", code="not_found")
    body = await fw.read_request_body(scope, receive, MAX_HOOK_BODY) or b""
    if not valid_signature(secret, body, header(scope, b"x-hub-signature-256")):
        raise GatewayError(401, "bad or missing X-Hub-Signature-256", "authentication_error", "bad_signature")
    delivery = (header(scope, b"x-github-delivery") or b"").decode("latin-1")[:200]
    if not fw.deliveries.first_time(delivery or None, body, time.time()):
        log.info("GitHub delivery %s seen before: ignored", delivery or "(no id)")
        await send_json(send, 200, {"status": "duplicate"})
        return
    event = (header(scope, b"x-github-event") or b"").decode("latin-1")
    payload: dict[str, Any] = {"source": "github", "event": event}
    try:
        data = loads(body) if body else {}
    except BadJSON:
        data = {}
    if isinstance(data, dict):
        if isinstance(data.get("ref"), str):
            payload["ref"] = data["ref"]
        pr = data.get("pull_request")
        if isinstance(pr, dict) and isinstance(pr.get("number"), int):
            payload["pr"] = pr["number"]  # a hint: which PR to look at, nothing about it
            if fw.verified_events is not None:
                # Before the signal, so the pass it wakes finds the verified facts queued.
                fw.verified_events(event, data)
    send_signal(fw.settings.state_dir, "wake", payload)
    await send_json(send, 202, {"status": "accepted"})
