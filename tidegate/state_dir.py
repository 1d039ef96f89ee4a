"""Where the state directory is: `--state DIR`, else `$TIDEGATE_STATE`, else `./state`.

Why here: every command of the reconciler and of the gateway must find the same directory, so a
second terminal acts on the running `up`; one function keeps the rule in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

STATE_ENV = "TIDEGATE_STATE"
DEFAULT_STATE = "state"


def choose_state_dir(flag: str | None, environ: Mapping[str, str]) -> Path:
    """The state directory as given (not resolved): the flag, else the environment, else ./state."""
    return Path(flag or environ.get(STATE_ENV) or DEFAULT_STATE)
