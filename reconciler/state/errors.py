"""The reconciler's own error hierarchy (backend errors live in backends.base).

Why: callers (CLI, loop) must tell "this state dir belongs to someone else" apart from "the state
file is corrupt" apart from "this one service cannot be deployed", and map each to an exit code or
a status line, without catching everything.
"""

from __future__ import annotations


class ReconcilerError(Exception):
    """Base of every error raised by the reconciler engine."""


class StateError(ReconcilerError):
    """The state directory cannot be read or written (corrupt JSON, newer schema, I/O error)."""


class StateLockedError(StateError):
    """Another process owns the state directory; the message names the holder (pid, host)."""

    def __init__(self, message: str, holder: str | None = None) -> None:
        super().__init__(message)
        self.holder = holder


class StateUnreadableError(StateError):
    """A state document exists but cannot be used (truncated, not JSON, malformed, newer schema).
    The message names the file, the cause and, for state.json, the command that restores the
    backup."""


class StateUnwritableError(StateError):
    """The state directory takes no writes (disk full, read-only, permissions): nothing that
    changes what runs may happen until it does, because its outcome could not be recorded."""


class StaleStateError(StateError):
    """A write was refused because the state moved on since it was read (serial/lineage check)."""

