"""Where a TGI model's chat template comes from: the service config, else the model repository.

Without `chat_template` in the config, `tokenizer_config.json` of the model (`model.name` as the
Hugging Face repo id) is fetched with huggingface_hub - when it is installed and the Hub is
reachable - and cached for the gateway's life. Otherwise the request fails with a message that
says what to do (set `model.chat_template`). Failures are remembered for a minute so a missing
network does not add a timeout to every request.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tidegate.routes import ModelRoute

FAILURE_TTL = 60.0
# How long a request waits for the Hub. huggingface_hub retries a refused or failing connection
# five times with backoff (about 24 s); the fetch goes on in the background and a later request
# uses its result, but no request is held that long.
FETCH_WAIT = 5.0


class TemplateUnavailable(Exception):
    """No chat template can be found; the message says why (answered as 503)."""


@dataclass(frozen=True)
class ChatTemplate:
    template: str
    bos_token: Any
    eos_token: Any


def _pick(template: Any) -> str | None:
    if isinstance(template, str):
        return template
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        found = named.get("default") or next(iter(named.values()), None)
        return found if isinstance(found, str) else None
    return None


def from_tokenizer_config(config: dict[str, Any], model: ModelRoute) -> ChatTemplate:
    template = _pick(config.get("chat_template"))
    if template is None:
        raise TemplateUnavailable(
            f"model {model.name!r}: tokenizer_config.json has no chat_template; set model.chat_template in the service config"
        )
    return ChatTemplate(
        template,
        model.bos_token if model.bos_token is not None else config.get("bos_token"),
        model.eos_token if model.eos_token is not None else config.get("eos_token"),
    )


def _download(repo_id: str, endpoint: str | None, cache_dir: Path | None) -> dict[str, Any]:
    try:
        hub = importlib.import_module("huggingface_hub")
    except ModuleNotFoundError as e:
        raise TemplateUnavailable(
            f"model {repo_id!r} has no chat_template in its service config, and huggingface_hub is not "
            "installed to fetch the model's tokenizer_config.json; set model.chat_template"
        ) from e
    try:
        path = hub.hf_hub_download(
            repo_id=repo_id,
            filename="tokenizer_config.json",
            endpoint=endpoint,
            cache_dir=str(cache_dir) if cache_dir is not None else None,
            etag_timeout=5,
        )
        with open(path, encoding="utf-8") as f:
            data: dict[str, Any] = json.load(f)
        return data
    except Exception as e:  # network, auth, missing repo: all mean "cannot get it"
        raise TemplateUnavailable(
            f"model {repo_id!r} has no chat_template in its service config, and its tokenizer_config.json "
            f"could not be fetched from the Hugging Face Hub ({type(e).__name__}); set model.chat_template"
        ) from e


class TemplateResolver:
    def __init__(self, endpoint: str | None = None, cache_dir: Path | None = None) -> None:
        self.endpoint = endpoint
        self.cache_dir = cache_dir
        self._cache: dict[str, ChatTemplate] = {}
        self._failed: dict[str, tuple[float, str]] = {}
        self._fetching: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.fetch_wait = FETCH_WAIT

    async def resolve(self, model: ModelRoute) -> ChatTemplate:
        if model.chat_template:
            return ChatTemplate(model.chat_template, model.bos_token, model.eos_token)
        cached = self._cache.get(model.name)
        if cached is not None:
            return cached
        failed = self._failed.get(model.name)
        if failed is not None and time.monotonic() - failed[0] < FAILURE_TTL:
            raise TemplateUnavailable(failed[1])
        fetch = self._fetching.get(model.name)
        if fetch is None:
            fetch = asyncio.ensure_future(asyncio.to_thread(_download, model.name, self.endpoint, self.cache_dir))
            self._fetching[model.name] = fetch
            fetch.add_done_callback(functools.partial(self._fetched, model.name))
        try:
            config = await asyncio.wait_for(asyncio.shield(fetch), self.fetch_wait)
        except TimeoutError:
            raise TemplateUnavailable(
                f"model {model.name!r} has no chat_template in its service config, and fetching its "
                "tokenizer_config.json from the Hugging Face Hub is taking long; retry shortly, or set "
                "model.chat_template"
            ) from None
        try:
            found = from_tokenizer_config(config, model)
        except TemplateUnavailable as e:
            self._failed[model.name] = (time.monotonic(), str(e))
            raise
        self._cache[model.name] = found
        return found

    def _fetched(self, name: str, done: asyncio.Future[dict[str, Any]]) -> None:
        """A fetch ended (awaited or not): a failure is remembered for FAILURE_TTL."""
        self._fetching.pop(name, None)
        error = None if done.cancelled() else done.exception()
        if isinstance(error, TemplateUnavailable):
            self._failed[name] = (time.monotonic(), str(error))
