"""dstack's duration grammar: `300`, `"90s"`, `"5m"`, `"1h"`, `"2d"`, `"1w"` -> whole seconds.

Why here: scaling delays, `retry.duration` and `max_duration` all use it, and they must agree with
dstack exactly so a config that works there means the same thing here.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import WithJsonSchema

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^(?P<amount>\d+)\s*(?P<unit>[smhdw])?$")


def parse_duration(value: object) -> int:
    """Seconds from an int or a `<n><unit>` string; raises ValueError on anything else."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 300, '5m' or '1h', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a duration cannot be negative: {value}")
        return value
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    if isinstance(value, str):
        match = _DURATION.match(value.strip())
        if match:
            return int(match["amount"]) * _UNITS[match["unit"] or "s"]
    raise ValueError(f"expected a duration like 300, '5m' or '1h', got {value!r}")


def format_duration(seconds: int) -> str:
    """The shortest exact unit form (`300` -> `5m`), for messages and `tidegate schema` docs."""
    for unit in ("w", "d", "h", "m"):
        size = _UNITS[unit]
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# The schema of a duration field: a whole number of seconds or a `<n><unit>` string.
DURATION_SCHEMA: dict[str, Any] = {
    "anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "examples": ["30s", "5m", "1h"]}]
}
Duration = Annotated[int, WithJsonSchema(DURATION_SCHEMA)]
