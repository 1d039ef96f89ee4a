"""Reading one config file: its bytes (bounded), decoded as UTF-8, and parsed (config/parse.py).

Why a module of its own: the loader (config/loader.py) asks for a file's parse through its parse
cache; what a read and a decode do, and how they fail, is the same for every caller. A problem is
a diagnostic on the file (line 1, or the line of the first byte that is not UTF-8), never an
exception, except an OSError from `read_bytes` (the loader words it, and does not cache it).
"""

from __future__ import annotations

import codecs
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reconciler.config.diagnostics import Diagnostic
from reconciler.config.parse import FileKind, ParsedFile, parse_service_text

MAX_FILE_BYTES = 1_000_000
CANNOT_READ = "cannot read the file"
_BOM = codecs.BOM_UTF8


def read_text(root: Path, rel: str) -> tuple[str | None, Diagnostic | None]:
    try:
        data = (root / rel).read_bytes()
    except OSError as e:
        return None, Diagnostic(rel, 1, 1, "", f"{CANNOT_READ}: {e.strerror or e}")
    return decode(data, rel)


def decode(data: bytes, rel: str) -> tuple[str | None, Diagnostic | None]:
    if len(data) > MAX_FILE_BYTES:
        return None, Diagnostic(rel, 1, 1, "", f"the file is larger than {MAX_FILE_BYTES} bytes")
    try:
        # (utf-8-sig's decoder is Python code: ~1 µs more per file; the same text and errors)
        return (data.decode("utf-8") if data[:3] != _BOM else data.decode("utf-8-sig")), None
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        return None, Diagnostic(rel, line, 1, "", "the file is not valid UTF-8")


def read_bytes(path: str) -> bytes:
    """A file's bytes (at most MAX_FILE_BYTES + 1: more is refused anyway) in three system calls
    for a usual config file: open, read, close (`open().read()` makes six)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, 65536)
        if len(data) < 65536:  # a regular file reads short only at its end
            return data
        chunks = [data]
        size = len(data)
        while size <= MAX_FILE_BYTES:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def parse_bytes(data: bytes, rel: str, profile: Mapping[str, Any] | None) -> ParsedFile:
    text, problem = decode(data, rel)
    if text is None:
        return ParsedFile(FileKind.INVALID, rel, None, None, [problem] if problem else [])
    # a broken profiles file fails every service (below); do not blame the service files for it
    return parse_service_text(text, rel, profile)
