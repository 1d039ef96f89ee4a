"""Secrets by structure: salted hashes of bare-`KEY` values, and masking of replica output.

Why: env values taken from the reconciler's environment or --env-file (bare `KEY` entries) are
secrets. An earlier version replaced secret values as text over the serialised state.json and
journal lines, so an ordinary value (`DEBUG_FLAG=true`) rewrote `"auth": true` into `"auth": ***`
and the state could no longer be read. The rules now:

- A secret value is hashed where it enters (`secret_hash`, keyed with the installation salt,
  reconciler.desired). Documents (state, journal, routes, plan output) carry names and these
  hashes only; a serialised document is never rewritten as text.
- Text that comes from outside — a replica's exit message or log tail, a backend error, a probe
  error — may quote a secret the replica received. It is masked as a *field value*, before it is
  put into a record or printed (`Masker`, CI-style: every occurrence of a value becomes `***`).
  A masked string is still a string, so the document around it stays valid whatever the value is
  (`true`, `"`, `}`…), and no other field is ever touched.
- Only the values a replica actually received are masked in its text (`ReplicaRecord.secrets`:
  name -> hash), so `true` given to one service does not blank `true` out of another's messages.
  Values shorter than MIN_SECRET_LEN are not masked: replacing every `1` or `on` would destroy
  the text and hide nothing (such a value is not a secret anyway).
- Whoever shows replica output re-derives the values from its own environment and env file
  (`SecretBook`): a candidate counts only when its salted hash equals the recorded one. `ps` and
  `logs` run as separate processes with the operator's environment; when they cannot re-derive a
  value the replica received, they withhold that replica's output instead of showing it unmasked
  (`SecretBook.masker` returns None).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

MIN_SECRET_LEN = 4  # shorter values ("1", "on") would mask ordinary words and digits
MASK = "***"


def secret_hash(salt: str, name: str, value: str) -> str:
    """The salted digest recorded for secret `name` with `value` (never the value itself)."""
    msg = name.encode() + b"\0" + value.encode("utf-8", "surrogatepass")
    return hmac.new(salt.encode(), msg, hashlib.sha256).hexdigest()[:32]


@dataclass(frozen=True)
class Masker:
    """Replaces every occurrence of the given values in a string with `***` (one pass, longest
    value first, so a value containing another is masked whole and `***` is never re-scanned)."""

    values: tuple[str, ...] = ()
    _pattern: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # A multi-line value (a key file's contents) is also masked line by line: output is shown
        # and stored a line at a time, so the whole value rarely appears in one string.
        forms = {form for v in self.values for form in (v, *v.splitlines())}
        maskable = sorted({v for v in forms if len(v) >= MIN_SECRET_LEN}, key=len, reverse=True)
        object.__setattr__(self, "values", tuple(maskable))
        if maskable:
            object.__setattr__(self, "_pattern", re.compile("|".join(re.escape(v) for v in maskable)))

    def __call__(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(MASK, text)

    def lines(self, lines: Iterable[str]) -> list[str]:
        return [self(line) for line in lines]


NO_MASK = Masker()


def withheld(names: Iterable[str]) -> str:
    """What is shown instead of replica output that cannot be masked."""
    return (
        f"(withheld: the replica received {', '.join(sorted(names))}, whose value this process does "
        "not know, so its output cannot be masked; run with the environment / --env-file `up` uses)"
    )


class SecretBook:
    """The secret values one process knows, found by their recorded salted hash.

    Candidates are the process's own env (environment overlaid by --env-file) and every value a
    desired set resolved (`learn`). Nothing here is ever written anywhere."""

    def __init__(self, salt: str, env: Mapping[str, str] | None = None) -> None:
        self.salt = salt
        self._env = dict(env or {})
        self._known: dict[str, str] = {}  # hash -> value
        self._by_spec: dict[str, dict[str, str]] = {}  # spec hash -> {name: hash}
        self._all: Masker | None = None

    def learn(self, name: str, value: str) -> str:
        h = secret_hash(self.salt, name, value)
        if self._known.get(h) != value:
            self._known[h] = value
            self._all = None
        return h

    def all_secrets(self) -> Masker:
        """A masker of every secret value a desired set resolved (not of the whole environment):
        for this process's own log, where any message may quote any of them."""
        if self._all is None:
            self._all = Masker(tuple(self._known.values()))
        return self._all

    def learn_spec(self, spec_hash: str, secrets: Mapping[str, str]) -> None:
        """`secrets` (name -> hash) are what a replica of `spec_hash` receives (the spec hash covers
        the env values, so one spec hash always means the same values)."""
        self._by_spec[spec_hash] = dict(secrets)

    def for_spec(self, spec_hash: str) -> Mapping[str, str] | None:
        return self._by_spec.get(spec_hash)

    def value(self, name: str, digest: str) -> str | None:
        known = self._known.get(digest)
        if known is not None:
            return known
        candidate = self._env.get(name)
        if candidate is not None and hmac.compare_digest(secret_hash(self.salt, name, candidate), digest):
            self.learn(name, candidate)
            return candidate
        return None

    def unknown(self, received: Mapping[str, str]) -> list[str]:
        """Names of `received` (name -> hash) whose value this process cannot re-derive."""
        return sorted(n for n, h in received.items() if self.value(n, h) is None)

    def masker(self, received: Mapping[str, str]) -> Masker | None:
        """A masker for text from a replica that received `received`; None when a value is unknown."""
        values: list[str] = []
        for name, digest in received.items():
            v = self.value(name, digest)
            if v is None:
                return None
            values.append(v)
        return Masker(tuple(values)) if values else NO_MASK

    def mask(self, received: Mapping[str, str], text: str) -> str:
        """`text` masked for a replica that received `received`; withheld when that is impossible."""
        m = self.masker(received)
        return m(text) if m is not None else withheld(self.unknown(received))


class MaskingFilter(logging.Filter):
    """Masks every known secret value in a log record's text (message and traceback) before a
    handler formats it: `up`'s own log is free-form text, and an error from a backend or a replica
    may quote a value anywhere in it (the per-service boundary logs tracebacks)."""

    def __init__(self, book: SecretBook) -> None:
        super().__init__()
        self.book = book

    def filter(self, record: logging.LogRecord) -> bool:
        masker = self.book.all_secrets()
        if not masker.values:
            return True
        record.msg, record.args = masker(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = masker(record.exc_text)
        if record.stack_info:
            record.stack_info = masker(record.stack_info)
        return True


def mask_logs(book: SecretBook, logger: logging.Logger | None = None) -> MaskingFilter:
    """Install a MaskingFilter on every handler of `logger` (the root logger by default), so
    records from every library are masked too. Returns it (remove it with `unmask_logs`)."""
    f = MaskingFilter(book)
    for handler in (logger or logging.getLogger()).handlers:
        handler.addFilter(f)
    return f


def unmask_logs(f: MaskingFilter, logger: logging.Logger | None = None) -> None:
    for handler in (logger or logging.getLogger()).handlers:
        handler.removeFilter(f)
