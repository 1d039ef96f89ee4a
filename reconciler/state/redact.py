"""Redaction of secret values from anything the reconciler writes or logs.

Why: env values taken from the reconciler's environment or --env-file (bare `KEY` entries) are
secrets. The engine never stores them on purpose, but error text from outside can carry them: a
replica that prints its environment and exits puts it in the backend's exit message, a backend
error may echo a request. Every such message passes through a `Redactor` before it reaches
state.json, the journal or a log line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

MIN_SECRET_LEN = 4  # shorter values ("1", "on") would redact ordinary words


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: tuple[str, ...] = ()
        self.update(secrets)

    def update(self, secrets: Iterable[str]) -> None:
        forms: set[str] = set()
        for s in secrets:
            if len(s) >= MIN_SECRET_LEN:
                forms.add(s)
                forms.add(json.dumps(s)[1:-1])  # as it appears inside a JSON string
        # Longest first, so a secret containing another is replaced whole.
        self._secrets = tuple(sorted(forms, key=len, reverse=True))

    def __call__(self, text: str) -> str:
        for s in self._secrets:
            if s in text:
                text = text.replace(s, "***")
        return text
