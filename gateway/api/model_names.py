"""A preview's model name, `<model>@pr-<N>`, told to the replica as the name it serves.

Why: a pull request's preview publishes its model as `<model>@pr-<N>` (so it can sit beside the
deployed one in `/v1/models`), but the replica is the same server with the same `--served-model-name`:
vLLM and TGI answer 404 to a model name they do not serve. The gateway puts the served name in the
request's `model` field and the public name back in every `"model": ...` of the answer: the JSON
body, or each line of a server-sent event stream (rewritten line by line, so an event split across
two chunks is still found whole).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from tidegate.routes import ServiceRoute


def served_name(route: ServiceRoute) -> str | None:
    """The name the replica serves when it differs from the public one (a preview), else None."""
    if route.model is None or route.preview_pr is None:
        return None
    served = route.model.served_name
    return served if served != route.model.name else None


def _quoted(name: str) -> bytes:
    return json.dumps(name).encode()


@dataclass
class ModelRename:
    """Rewrites `"model": "<served>"` to `"model": "<public>"` in a response's bytes."""

    served: str
    public: str

    def __post_init__(self) -> None:
        self._pattern = re.compile(rb'("model"\s*:\s*)' + re.escape(_quoted(self.served)))
        self._replacement = b"\\g<1>" + _quoted(self.public).replace(b"\\", b"\\\\")
        self._tail = b""

    def whole(self, body: bytes) -> bytes:
        return self._pattern.sub(self._replacement, body)

    def feed(self, chunk: bytes) -> bytes:
        """The complete lines so far, rewritten; a partial last line waits for the next chunk."""
        data = self._tail + chunk
        cut = data.rfind(b"\n") + 1
        self._tail = data[cut:]
        return self.whole(data[:cut]) if cut else b""

    def flush(self) -> bytes:
        rest, self._tail = self._tail, b""
        return self.whole(rest)

    def request(self, request: dict[str, object]) -> bytes:
        """The request body for the replica: the same JSON with the served name."""
        return json.dumps({**request, "model": self.served}).encode()
