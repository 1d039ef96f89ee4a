"""The settings file's `token_limits:` section: rate limits per API token, checked with file:line.

```yaml
token_limits:
  ci-bot:                      # a token's name (`tidegate token create ci-bot`)
    - {prefix: /v1/chat, rps: 2, burst: 5}
    - {rps: 10}
  "*":                         # every token without its own entry
    - {rps: 20, burst: 40}
```

Each item is dstack's `rate_limits` item without `key` (the token is the key). Both `tidegate up
--settings FILE` and `tidegate gateway --settings FILE` read it; an error names the file, the line
and the column of the offending key, like every other settings error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

SECTION = "token_limits"


class TokenLimitItem(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prefix: str = "/"
    rps: float = Field(gt=0)
    burst: int = Field(default=0, ge=0)

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"must start with `/` (got {value!r})")
        return value


class TokenLimitsError(ValueError):
    """The section is invalid; the message names file:line:column and the field."""


def _node_at(node: yaml.Node | None, loc: tuple[str | int, ...]) -> yaml.Node | None:
    """The deepest node of the tree along `loc` (a key's node for mapping keys)."""
    found = node
    for i, part in enumerate(loc):
        if isinstance(found, yaml.MappingNode):
            match = next(((k, v) for k, v in found.value if k.value == part), None)
            if match is None:
                return found
            found = match[1] if i < len(loc) - 1 else match[0]
        elif isinstance(found, yaml.SequenceNode) and isinstance(part, int) and part < len(found.value):
            found = found.value[part]
        else:
            return found
    return found


def _where(path: Path | str, root: yaml.Node | None, loc: tuple[str | int, ...]) -> str:
    node = _node_at(root, loc)
    mark = node.start_mark if node is not None else None
    line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    return f"{path}:{line}:{column}"


def parse_token_limits(section: Any, path: Path | str, root: yaml.Node | None) -> dict[str, list[dict[str, Any]]]:
    """Checked `token_limits` as plain data (for `GatewaySettings.token_limits`)."""
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise TokenLimitsError(f"{_where(path, root, (SECTION,))}: {SECTION}: expected a mapping of token name to a list of limits")
    out: dict[str, list[dict[str, Any]]] = {}
    for name, items in section.items():
        where = (SECTION, str(name))
        if isinstance(items, dict):
            items = [items]
        if not isinstance(items, list) or not items:
            raise TokenLimitsError(f"{_where(path, root, where)}: {SECTION}.{name}: expected a list of {{prefix, rps, burst}}")
        checked: list[dict[str, Any]] = []
        prefixes: set[str] = set()
        for index, item in enumerate(items):
            try:
                limit = TokenLimitItem.model_validate(item)
            except ValidationError as e:
                err = e.errors(include_url=False)[0]
                field = ".".join(str(p) for p in err["loc"])
                at = (*where, index, *err["loc"]) if isinstance(section[name], list) else (*where, *err["loc"])
                message = "unknown key" if err["type"] == "extra_forbidden" else str(err["msg"]).removeprefix("Value error, ")
                shown = f"{SECTION}.{name}[{index}]" + (f".{field}" if field else "")
                raise TokenLimitsError(f"{_where(path, root, at)}: {shown}: {message}") from e
            if limit.prefix in prefixes:
                at = (*where, index, "prefix")
                raise TokenLimitsError(f"{_where(path, root, at)}: {SECTION}.{name}: two limits for prefix {limit.prefix!r}: keep one")
            prefixes.add(limit.prefix)
            checked.append(limit.model_dump())
        out[str(name)] = checked
    return out


def read_token_limits(path: Path | str) -> dict[str, list[dict[str, Any]]]:
    """The `token_limits` of a settings file ({} when it has none)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise TokenLimitsError(f"cannot read settings {path}: {e.strerror or e}") from e
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise TokenLimitsError(f"{at}: {getattr(e, 'problem', None) or e}") from e
    if not isinstance(data, dict):
        return {}
    return parse_token_limits(data.get(SECTION), path, root)
