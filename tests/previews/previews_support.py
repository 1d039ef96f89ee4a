"""Shared test support for previews: a local stand-in for the GitHub REST API, GitHub-shaped
payloads, and a bare git remote that PRs are pushed to as `refs/pull/<N>/head`."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from reconciler.previews.github import GitHubClient, GitHubSettings

TOKEN = "ghp_s3cretT0kenValue"
REPO = "acme/models"
SHA = "a1" * 20


def repo_obj(full_name: str, fork: bool) -> dict[str, Any]:
    owner, _, name = full_name.partition("/")
    return {"id": 1, "name": name, "full_name": full_name, "fork": fork, "owner": {"login": owner}, "private": False}


def pull_request(
    number: int = 7,
    *,
    state: str = "open",
    merged: bool = False,
    head_repo: str | None = REPO,
    head_fork: bool = False,
    labels: tuple[str, ...] = (),
    base_ref: str = "main",
    sha: str = SHA,
) -> dict[str, Any]:
    """A pull-request object with the fields GitHub sends (trimmed of the many URLs)."""
    return {
        "url": f"https://api.github.com/repos/{REPO}/pulls/{number}",
        "html_url": f"https://github.com/{REPO}/pull/{number}",
        "number": number,
        "state": state,
        "locked": False,
        "title": "Bump the chat model",
        "user": {"login": "dev"},
        "labels": [{"id": i, "name": name, "color": "ededed"} for i, name in enumerate(labels)],
        "created_at": "2026-11-27T10:00:00Z",
        "updated_at": "2026-11-28T04:00:00Z",
        "closed_at": None if state == "open" else "2026-11-28T05:00:00Z",
        "merged_at": "2026-11-28T05:00:00Z" if merged else None,
        "merged": merged,
        "draft": False,
        "head": {
            "label": "dev:feature",
            "ref": "feature",
            "sha": sha,
            "repo": repo_obj(head_repo, head_fork) if head_repo else None,
        },
        "base": {"label": "acme:main", "ref": base_ref, "sha": "b2" * 20, "repo": repo_obj(REPO, False)},
    }


def event(action: str, pr: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A `pull_request` webhook payload (X-GitHub-Event: pull_request)."""
    return {
        "action": action,
        "number": pr["number"],
        "pull_request": pr,
        "repository": repo_obj(REPO, False),
        "sender": {"login": "dev"},
        **extra,
    }


@dataclass
class FakeGitHub:
    """State of the stand-in API: PRs, statuses posted, issue comments; every request recorded."""

    pulls: dict[int, dict[str, Any]] = field(default_factory=dict)
    statuses: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    comments: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # method, path, auth header
    page_size: int = 2
    fail_next: int | None = None
    next_id: int = 100


def make_handler(gh: FakeGitHub) -> type[BaseHTTPRequestHandler]:
    prefix = f"/repos/{REPO}"

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            pass

        def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(length) or b"null")

        def _handle(self, method: str) -> None:
            path, _, query = self.path.partition("?")
            gh.requests.append((method, path, self.headers.get("Authorization")))
            if gh.fail_next is not None:
                status, gh.fail_next = gh.fail_next, None
                self._send(status, {"message": "try later"})
                return
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self._send(401, {"message": "Bad credentials"})
                return
            parts = path.removeprefix(prefix).strip("/").split("/")
            params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
            if method == "GET" and parts == ["pulls"]:
                items = [p for p in gh.pulls.values() if p["state"] == "open"]
                if "base" in params:
                    items = [p for p in items if p["base"]["ref"] == params["base"]]
                self._send(200, items)
            elif method == "GET" and len(parts) == 2 and parts[0] == "pulls":
                pr = gh.pulls.get(int(parts[1]))
                self._send(200, pr) if pr else self._send(404, {"message": "Not Found"})
            elif method == "POST" and len(parts) == 2 and parts[0] == "statuses":
                gh.statuses.append((parts[1], self._body()))
                self._send(201, {"id": len(gh.statuses)})
            elif method == "GET" and len(parts) == 3 and parts[0] == "issues" and parts[2] == "comments":
                items = gh.comments.get(int(parts[1]), [])
                page = int(params.get("page", "1"))
                chunk = items[(page - 1) * gh.page_size : page * gh.page_size]
                headers = {}
                if page * gh.page_size < len(items):
                    host = self.headers["Host"]
                    headers["Link"] = f'<http://{host}{path}?page={page + 1}>; rel="next"'
                self._send(200, chunk, headers)
            elif method == "POST" and len(parts) == 3 and parts[0] == "issues" and parts[2] == "comments":
                gh.next_id += 1
                comment = {"id": gh.next_id, "body": self._body()["body"]}
                gh.comments.setdefault(int(parts[1]), []).append(comment)
                self._send(201, comment)
            elif method == "PATCH" and len(parts) == 3 and parts[:2] == ["issues", "comments"]:
                for items in gh.comments.values():
                    for c in items:
                        if c["id"] == int(parts[2]):
                            c["body"] = self._body()["body"]
                            self._send(200, c)
                            return
                self._send(404, {"message": "Not Found"})
            else:
                self._send(404, {"message": "Not Found"})

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def do_PATCH(self) -> None:
            self._handle("PATCH")

    return Handler


@contextmanager
def serve_github() -> Iterator[tuple[FakeGitHub, GitHubClient]]:
    """A threaded HTTP server on 127.0.0.1 answering like the GitHub REST API, and a client for it."""
    gh = FakeGitHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(gh))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    client = GitHubClient(GitHubSettings(repo=REPO, token=TOKEN, api_url=url, timeout=5))
    try:
        yield gh, client
    finally:
        client.close()
        server.shutdown()
        server.server_close()
        thread.join(5)
