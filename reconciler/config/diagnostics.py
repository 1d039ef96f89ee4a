"""Diagnostics: one problem in one file, at a line and column, with the field path it concerns."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True)
class Diagnostic:
    path: str  # posix, relative to the loaded root
    line: int  # 1-based
    column: int  # 1-based
    field: str  # dotted field path (`resources.gpu`, `env.2`); empty for the whole file
    message: str
    severity: Severity = Severity.ERROR

    def format(self) -> str:
        """`path:line:column: field.path: message` (the field part is left out when empty)."""
        where = f"{self.path}:{self.line}:{self.column}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"

    def sort_key(self) -> tuple[str, int, int, str]:
        return (self.path, self.line, self.column, self.message)
