"""A client for a remote tidegate's control API (`--server URL`, `TIDEGATE_SERVER` / `TIDEGATE_TOKEN`).

Why in the contracts package: both the reconciler's commands (`ps`, `logs`, `stop`, `start`) and the
gateway's (`token`) talk to the same API, and neither may import the other. It speaks the API's
error shape `{"error": {"code", "message"}}` and raises `ControlClientError` with that message.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import httpx

SERVER_ENV = "TIDEGATE_SERVER"
TOKEN_ENV = "TIDEGATE_TOKEN"


class ControlClientError(Exception):
    pass


def server_from(arg: str | None, environ: Mapping[str, str]) -> str | None:
    """`--server`, else `$TIDEGATE_SERVER`, else None (the command reads the local state dir)."""
    value = arg or environ.get(SERVER_ENV) or None
    return value.rstrip("/") if value else None


class ControlClient:
    def __init__(self, server: str, token: str | None, timeout: float = 30.0, transport: httpx.BaseTransport | None = None) -> None:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=server, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            r = self.http.request(method, "/api/v1" + path, **kwargs)
        except httpx.HTTPError as e:
            raise ControlClientError(f"cannot reach {self.http.base_url}: {e}") from e
        if r.status_code >= 400:
            raise ControlClientError(_message(r))
        return r.json() if r.content else None

    def stream_lines(self, path: str, params: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
        """(event, data) of a server-sent event stream, until the server ends it."""
        try:
            with self.http.stream("GET", "/api/v1" + path, params=dict(params), timeout=httpx.Timeout(30.0, read=None)) as r:
                if r.status_code >= 400:
                    r.read()
                    raise ControlClientError(_message(r))
                event, data = "message", list[str]()
                for line in r.iter_lines():
                    if not line:
                        if data:
                            yield event, "\n".join(data)
                        event, data = "message", list[str]()
                    elif line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].removeprefix(" "))
        except httpx.HTTPError as e:
            raise ControlClientError(f"cannot reach {self.http.base_url}: {e}") from e


def _message(r: httpx.Response) -> str:
    try:
        body = r.json()
        return f"{r.status_code}: {body['error']['message']}"
    except (ValueError, KeyError, TypeError):
        return f"{r.status_code}: {r.text[:200]}"
