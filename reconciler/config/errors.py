"""Validation errors that point below the field that raised them.

A before-validator on `env` sees the whole list, but the user needs the line of the third item.
`located(message, *subloc)` raises a pydantic error whose context carries the extra path; the
loader appends it to the error's `loc` before it looks the position up in the YAML node tree.
"""

from __future__ import annotations

from typing import NoReturn

from pydantic_core import PydanticCustomError

SUBLOC_KEY = "tidegate_subloc"


def located(message: str, *subloc: str | int) -> NoReturn:
    """Raise a validation error for `<field>.<subloc...>`."""
    raise PydanticCustomError("value_error", message, {SUBLOC_KEY: list(subloc)})
