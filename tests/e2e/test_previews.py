"""Previews and webhooks end to end: a real `tidegate up --previews` on the local backend follows a bare
remote whose `refs/pull/<N>/head` refs the test pushes, and GitHub webhooks built exactly as GitHub
sends them (event header, JSON body, `X-Hub-Signature-256` with the shared secret) are POSTed to the
gateway.

Story: open PR #7 (changes `web`) -> `web-pr-7` answers through the gateway at its own host and its
model is listed as `echo@pr-7`; push to the PR -> the preview rolls to the new content; a signed
`pull_request` "closed" webhook -> the preview is gone; PR #9 from a fork -> no preview, the reason in
`tidegate ps --json`. A second test: with a 60 s poll interval, a signed `push` webhook gets a new
commit deployed well before the next poll.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import textwrap
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.helpers import Remote, Tidegate, service_yaml, wait_for
from tests.support.git_repo import git

pytestmark = pytest.mark.slow

SECRET = "e2e-webhook-secret"
REPO = {"full_name": "acme/configs", "fork": False}
FORK = {"full_name": "mallory/configs", "fork": True}

# Like helpers.APP (GET answers the GREETING), plus a minimal OpenAI chat endpoint so a service can
# map a model (the readiness probe of a mapped model sends one chat completion).
APP = textwrap.dedent(
    """
    import json, os, sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, body):
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._send({"replica": os.environ.get("TIDEGATE_REPLICA"), "greeting": os.environ.get("GREETING"),
                        "pr": os.environ.get("TIDEGATE_PREVIEW_PR")})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            if body.get("model") != "echo":  # as vLLM and TGI: only the name it serves
                data = json.dumps({"object": "error", "message": "The model does not exist.", "code": 404}).encode()
                self.send_response(404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            self._send({"id": "c", "object": "chat.completion", "created": 0, "model": "echo",
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": os.environ.get("GREETING")}}]})

        def log_message(self, *args):
            pass

    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
    """
)

MODEL = "model:\n  type: chat\n  name: echo\n  format: openai\n"


def web(greeting: str) -> str:
    return service_yaml("web", 1, greeting, extra=MODEL)


def push_pr(remote: Remote, number: int, files: dict[str, str]) -> str:
    """Commit `files` on a branch off main and push it to `refs/pull/<number>/head` (what GitHub does)."""
    work = remote.work
    git(work, "checkout", "-q", "-B", f"pr-{number}", "main")
    for name, text in files.items():
        (work / name).write_text(text)
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", f"PR {number}")
    git(work, "push", "-q", "--force", "origin", f"HEAD:refs/pull/{number}/head")
    sha = git(work, "rev-parse", "HEAD")
    git(work, "checkout", "-q", "main")
    return sha


def send_webhook(tg: Tidegate, event: str, payload: dict[str, Any], secret: str = SECRET) -> httpx.Response:
    body = json.dumps(payload).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/e2e",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": hashlib.sha1(body).hexdigest(),
        "X-Hub-Signature-256": signature,
    }
    return httpx.post(f"http://127.0.0.1:{tg.port}/hooks/github", content=body, headers=headers, timeout=10)


def pull_request_event(action: str, number: int, sha: str, *, state: str, head_repo: dict[str, Any]) -> dict[str, Any]:
    pr = {
        "number": number,
        "state": state,
        "merged": False,
        "title": f"PR {number}",
        "html_url": f"https://github.com/acme/configs/pull/{number}",
        "labels": [],
        "updated_at": "2026-01-01T00:00:00Z",
        "head": {"ref": f"pr-{number}", "sha": sha, "repo": head_repo},
        "base": {"ref": "main", "sha": "0" * 40, "repo": REPO},
    }
    return {"action": action, "number": number, "pull_request": pr, "repository": REPO}


def through_gateway(tg: Tidegate, host: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{tg.port}/", headers={"Host": f"{host}:{tg.port}"}, timeout=5)


def greeting_at(tg: Tidegate, host: str) -> str | None:
    r = through_gateway(tg, host)
    return str(r.json()["greeting"]) if r.status_code == 200 else None


def ps_json(tg: Tidegate) -> dict[str, Any]:
    out = tg.run("ps", "--json")
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


def test_preview_lifecycle_through_the_gateway(remote: Remote, tidegate: Tidegate) -> None:
    tg = tidegate
    remote.push({"app.py": APP, "web.dstack.yml": web("production")}, "production")
    tg.up(remote.url, "--previews", env={"TIDEGATE_WEBHOOK_SECRET": SECRET})
    wait_for(lambda: greeting_at(tg, "web.localhost") == "production", 60, "production web")
    token = tg.run("token", "create", "e2e").stdout.strip()

    # Open PR #7 (known from its ref alone: polling is enough).
    sha1 = push_pr(remote, 7, {"web.dstack.yml": web("pr7-first")})
    wait_for(lambda: greeting_at(tg, "web-pr-7.localhost") == "pr7-first", 45, "preview web-pr-7")
    assert through_gateway(tg, "web-pr-7.localhost").json()["pr"] == "7"
    assert greeting_at(tg, "web.localhost") == "production"
    routes = json.loads((tg.state / "routes.json").read_text())["services"]
    assert routes["web-pr-7"]["preview_pr"] == 7 and routes["web"]["preview_pr"] is None
    models = httpx.get(
        f"http://127.0.0.1:{tg.port}/v1/models", headers={"Authorization": f"Bearer {token}"}, timeout=5
    ).json()
    assert {m["id"]: m["owned_by"] for m in models["data"]} == {"echo": "web", "echo@pr-7": "web-pr-7"}
    # The replica serves only `echo`: the gateway renames the preview's model both ways.
    sdk = openai.OpenAI(base_url=f"http://127.0.0.1:{tg.port}/v1", api_key=token, max_retries=0)
    answer = sdk.chat.completions.create(model="echo@pr-7", messages=[{"role": "user", "content": "hi"}])
    assert (answer.model, answer.choices[0].message.content) == ("echo@pr-7", "pr7-first")
    assert sdk.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}]).model == "echo"
    [preview] = ps_json(tg)["previews"]["previews"]
    assert (preview["name"], preview["pr"], preview["head_sha"]) == ("web-pr-7", 7, sha1)
    assert preview["expires_at"] is not None
    text = tg.run("ps")
    assert "web-pr-7" in text.stdout and "#7" in text.stdout and sha1[:12] in text.stdout

    # A push to the PR rolls the preview to the new head.
    sha2 = push_pr(remote, 7, {"web.dstack.yml": web("pr7-second")})
    wait_for(lambda: greeting_at(tg, "web-pr-7.localhost") == "pr7-second", 45, "rolled preview")
    assert ps_json(tg)["previews"]["previews"][0]["head_sha"] == sha2

    # A badly signed webhook is refused and changes nothing.
    closed = pull_request_event("closed", 7, sha2, state="closed", head_repo=REPO)
    assert send_webhook(tg, "pull_request", closed, secret="wrong").status_code == 401
    # Closing the PR (GitHub keeps the ref): the signed webhook tears the preview down.
    assert send_webhook(tg, "pull_request", closed).status_code == 202
    wait_for(lambda: "web-pr-7" not in tg.ps(), 30, "preview gone after close")
    assert through_gateway(tg, "web-pr-7.localhost").status_code == 404
    assert greeting_at(tg, "web.localhost") == "production"

    # A PR from a fork: no preview, and `ps` says why.
    sha9 = push_pr(remote, 9, {"web.dstack.yml": web("from-a-fork")})
    assert send_webhook(tg, "pull_request", pull_request_event("opened", 9, sha9, state="open", head_repo=FORK)).status_code == 202

    def fork_refused() -> bool:
        decision = ps_json(tg)["previews"]
        reasons = {(r["pr"], r["reason"]) for r in decision["rejected"]}
        return (9, "fork") in reasons and not decision["previews"] and "web-pr-9" not in tg.ps()

    wait_for(fork_refused, 30, "fork PR refused")
    assert (7, "closed") in {(r["pr"], r["reason"]) for r in ps_json(tg)["previews"]["rejected"]}
    assert "fork" in tg.run("ps").stdout
    assert through_gateway(tg, "web-pr-9.localhost").status_code == 404


def test_push_webhook_deploys_before_the_poll(remote: Remote, tidegate: Tidegate) -> None:
    tg = tidegate
    remote.push({"web.dstack.yml": service_yaml("web", 1, "v1")}, "v1")
    # The first pass fetches at once; the next timer fetch would come only after ~48-60 s.
    tg.up(remote.url, "--interval", "60", env={"TIDEGATE_WEBHOOK_SECRET": SECRET})
    wait_for(lambda: greeting_at(tg, "web.localhost") == "v1", 60, "first deploy")

    rev2 = remote.push({"web.dstack.yml": service_yaml("web", 1, "v2")}, "v2")
    push = {"ref": "refs/heads/main", "after": rev2, "repository": REPO, "commits": [{"id": rev2}]}
    assert send_webhook(tg, "push", push).status_code == 202
    # Well inside the 60 s interval: only the webhook can have triggered this fetch.
    wait_for(lambda: greeting_at(tg, "web.localhost") == "v2", 15, "deploy woken by the push webhook")
    assert tg.ps()["web"]["revision"] == rev2
