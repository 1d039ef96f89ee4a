"""YAML text -> python data through yaml-rs, for the documents where that is PyYAML's result too.

Why: the config loader parses every `.dstack.yml` of a tree on a cold load; PyYAML (even on
libyaml) spends ~100 µs composing a 13-line file, yaml-rs (Rust) ~9 µs. Line/column marks are
needed only for diagnostics, so the loader parses with `quick_load` first and goes back to the
marked path (yamldoc.load_document) for any file that gets a diagnostic.

yaml-rs reads YAML 1.2 (with resolver quirks of its own); tidegate reads YAML as PyYAML's
SafeLoader does (1.1: `yes` is true, `017` octal, `1:30` sexagesimal, timestamps, merge keys, ...).
`quick_load` answers only when the result is known to be the same, else it returns MISS and the
caller takes the marked path:
- a text check (`_refused`) refuses the constructs where the two differ or where PyYAML rejects
  what yaml-rs accepts: tags, anchors and aliases, directives and a second document, characters
  PyYAML refuses, a lone CR, a `:` starting a line of a flow collection, a block
  scalar ending the text without a line break, `.inf`/`.nan` spellings, and everything the libyaml
  path leaves to the pure-Python loader (yamldoc._PURE_ONLY: tabs, `?`, `|#`, ...);
- a walk of the result (`_count`) notes every string that PyYAML's resolvers would read as another
  type when written plain (`yes`, `1:30`, `2024-01-01`, `1_000`, `<<` — yaml-rs never merges —,
  `=`) or that PyYAML would not read as a plain scalar at all (`>x`, `|`, `- x`, `[:x]`); one is refused
  unless every occurrence of it in the text is quoted. It refuses keys that are not strings or
  span lines, nesting deeper than MAX_DEPTH and documents over yamldoc.MAX_NODES nodes;
- when the result holds a number, the number spellings the two read differently are refused
  (`_numbers_refused`: 017, 0o17, 0X1F, _1, +_1, -.5, 1e3);
- yaml-rs refuses duplicate keys and whatever it cannot parse: those take the marked path too,
  which reports them with their position.
The refusals err on the safe side (a refused document only costs time). A differential test
(tests/config/test_quick_yaml.py) holds every answer equal to PyYAML's on the repository's YAML,
the seed page's examples, every short number-like token, generated and mutated documents.
"""

from __future__ import annotations

import re
from typing import Any, Final

import yaml
import yaml_rs

from .yamldoc import MAX_NODES


class _Miss:
    def __repr__(self) -> str:
        return "MISS"


MISS: Final = _Miss()  # "use the marked path" (None is a document's value: the empty file)
ENABLED = True  # off: every document takes the marked path (the plan benchmark's "before")
MAX_DEPTH = 40  # deeper documents take the marked path (PyYAML's own limit is Python's recursion)

# Characters PyYAML's reader refuses (its NON_PRINTABLE) and those the libyaml path already leaves
# to the pure-Python loader (yamldoc._PURE_ONLY: tab, `?`, BOM, Unicode line breaks).
_REFUSED_CHARS = re.compile(
    "[^\n\r\x20-\x3e\x40-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]"
)
# ASCII text: one pass keeps the characters that need a look (`_ASCII_PLAIN` are the others);
# of those, all but `_ASCII_LOOK` are refused outright (control characters, DEL, tab, `?`).
_ASCII_LOOK = b"!&*%|>[{\r"
_ASCII_PLAIN = bytes(c for c in range(0x20, 0x7F) if c not in b"?" + _ASCII_LOOK) + b"\n"
_COLON_FIRST = re.compile(r"\n *:")  # `{x\n: y}`: a key's `:` on the next line (PyYAML: an error)
_INF_NAN = re.compile(r"\.[iInN][nNaA][fFnN]")  # yaml-rs reads `.INf` as infinity, PyYAML not
# Number spellings yaml-rs and PyYAML read differently, where a scalar starts (the text gets a
# leading line break): 017 (octal in YAML 1.1), 09, 0o17, 0X1F, _1, ._1, -_1 (`_numbers_refused`)
_NUMBER_START = "[-+]?[._]*(?:0[0-9_oOXB]|_)"
_ODD_NUMBER = re.compile("|".join(f"{before}{_NUMBER_START}" for before in (" ", "\n", r"\[", "{", ",", ":")))
_EXPONENT = re.compile(r"[0-9._][eE][-+]?[0-9_]")  # 1e3, 1.0e3: strings in PyYAML (`_floats_refused`)


def _refused(text: str) -> bool:
    """The text check: True when the document may read differently in yaml-rs and PyYAML."""
    if text.isascii():
        look = text.encode("ascii").translate(None, _ASCII_PLAIN)
        if look.translate(None, _ASCII_LOOK):
            return True
    else:
        if _REFUSED_CHARS.search(text):
            return True
        look = _ASCII_LOOK  # every check below
    if "\n---" in text or "\n..." in text or text.startswith("..."):
        return True  # a second document or a document end
    if _INF_NAN.search(text):
        return True
    if not look:
        return False
    if b"%" in look and ("\n%" in text or text.startswith("%")):
        return True  # a directive
    if (b"|" in look or b">" in look) and (
        not text.endswith("\n") or ("#" in text and (_block_comment(text, "|") or _block_comment(text, ">")))
    ):
        return True  # a block scalar ending the text (yaml-rs adds a line break), or `|#`
    if b"\r" in look and text.count("\r") != text.count("\r\n"):
        return True  # a line break PyYAML reads and yaml-rs does not
    if (b"[" in look or b"{" in look) and _COLON_FIRST.search(text):
        return True
    return (
        (b"!" in look and _starts_node(text, "!"))
        or (b"&" in look and _starts_node(text, "&"))
        or (b"*" in look and _starts_node(text, "*"))
    )


def _numbers_refused(text: str, floats: bool) -> bool:
    """The number spellings check (needed only when the data holds a number)."""
    if _ODD_NUMBER.search("\n" + text):
        return True
    return floats and ("-." in text or "+." in text or bool(_EXPONENT.search(text)))


def _block_comment(text: str, indicator: str) -> bool:
    """`|#`, `>-#`, `|2+#`... (yamldoc._PURE_ONLY's other half)."""
    at = text.find(indicator)
    while at >= 0:
        end = at + 1
        while end < len(text) and text[end] in "-+0123456789":
            end += 1
        if text.startswith("#", end):
            return True
        at = text.find(indicator, at + 1)
    return False


def _starts_node(text: str, char: str) -> bool:
    """Whether `char` (`!`, `&`, `*`) is somewhere where a node may start."""
    at = text.find(char)
    while at >= 0:
        if _node_start(text, at):
            return True
        at = text.find(char, at + 1)
    return False


def _node_start(text: str, at: int) -> bool:
    """True when a node may start at `at`: after the line's indentation or after an indicator
    (`- `, `: `, `? `, `[`, `{`, `,`), not inside a plain scalar (`cmd && next`, `rm *`)."""
    while at > 0 and text[at - 1] == " ":
        at -= 1
    return at == 0 or text[at - 1] in "\n\r-:?,[{"


# Strings PyYAML may read otherwise when they are written plain, by first character: PyYAML's
# implicit resolvers for numbers and timestamps (its regular expressions, joined), and what
# yaml-rs reads as a plain scalar where PyYAML refuses one (`[>x]`, `{c: |}`, `[- x]`, `@x`), and
# an empty block scalar ("\n" in yaml-rs, "" in PyYAML). Other resolved strings are `_WORDS`.
_RESOLVERS = yaml.resolver.Resolver.yaml_implicit_resolvers
_SUSPECT: dict[str, re.Pattern[str]] = {
    first: re.compile("|".join(f"(?:{regexp.pattern})" for _tag, regexp in _RESOLVERS[first]), re.X)
    for first in "+-.0123456789"
}
_SUSPECT["-"] = re.compile(_SUSPECT["-"].pattern + r"|(?:-(?:\s|$))", re.X)
_SUSPECT["?"] = re.compile(r"\?(?:\s|$)")
_SUSPECT.update({first: re.compile("") for first in ":|>%@`"})  # `[:x]`: plain in yaml-rs
_SUSPECT["\n"] = re.compile("\n+$")
# (`true`, `null`, `~` and the like are not strings in yaml-rs either, when written plain)
_WORDS = frozenset(
    ["yes", "Yes", "YES", "no", "No", "NO", "on", "On", "ON", "off", "Off", "OFF", "<<", "=", "!", "&", "*"]
)


class _Refused(Exception):
    pass


def quick_load(text: str) -> Any:
    """The data PyYAML's SafeLoader gives for `text`, or MISS when that is not certain here."""
    if not ENABLED or _refused(text):
        return MISS
    try:
        data: Any = yaml_rs.loads(text, parse_datetime=False)
    except Exception:
        return MISS  # a syntax error or a duplicate key: the marked path says where
    except BaseException as e:  # a panic in the extension (pyo3's PanicException)
        if type(e).__name__ != "PanicException":
            raise
        return MISS
    if type(data) is str:
        return MISS  # a document that is one string (not a config): yaml-rs ends a block scalar later
    found: list[Any] = []  # strings PyYAML may resolve otherwise, and one entry per number
    try:
        if _count(data, 0, found) > MAX_NODES:
            return MISS
    except _Refused:
        return MISS
    numbers = floats = False
    for item in found:
        if type(item) is str:
            if _held_plain(item, text):
                return MISS
        else:
            numbers = True
            floats = floats or type(item) is float
    if numbers and _numbers_refused(text, floats):
        return MISS
    return data


def _count(value: Any, depth: int, found: list[Any]) -> int:
    """Nodes in `value` (as yamldoc counts them); every suspect string (see _SUSPECT) and every
    number is added to `found`; _Refused for anything else unusual."""
    kind = type(value)
    if kind is str:
        if _suspect(value):
            found.append(value)
        return 1
    if kind is dict:
        if depth > MAX_DEPTH:
            raise _Refused
        nodes = 1 + len(value)  # the mapping and its keys
        if not value.keys() <= _PLAIN_KEYS:
            for key in value:
                if type(key) is not str or (not key.isidentifier() and _has_space(key)):
                    raise _Refused  # a complex key, or one on two lines (PyYAML: an error)
                if _suspect(key):
                    found.append(key)
                elif len(_PLAIN_KEYS) < _PLAIN_KEYS_KEPT:
                    _PLAIN_KEYS.add(key)
        for item in value.values():
            if type(item) is str:  # (the usual value: `_suspect` inline up to its regular expressions)
                if item in _WORDS or (
                    item and item[0] in _SUSPECT and item not in _NOT_SUSPECT and _suspect_match(item)
                ):
                    found.append(item)
                nodes += 1
            else:
                nodes += _count(item, depth + 1, found)
        return nodes
    if kind is list:
        if depth > MAX_DEPTH:
            raise _Refused
        nodes = 1
        for item in value:
            if type(item) is str:
                if item in _WORDS or (
                    item and item[0] in _SUSPECT and item not in _NOT_SUSPECT and _suspect_match(item)
                ):
                    found.append(item)
                nodes += 1
            else:
                nodes += _count(item, depth + 1, found)
        return nodes
    if kind is int or kind is float:
        found.append(value)
    elif kind is not bool and value is not None:
        raise _Refused  # a tuple (complex key), a date, bytes...
    return 1


# Strings known not to be suspect (`_suspect`), kept: a repository writes the same keys and the
# same resource ranges (`1..`, `24GB..`) in every file, and the answer depends on the string only.
# `_PLAIN_KEYS` holds keys that are also single-line strings (`_count`'s other key check).
_PLAIN_KEYS: set[str] = set()
_PLAIN_KEYS_KEPT = 4096
_NOT_SUSPECT: set[str] = set()


def clear() -> None:
    """Forget the strings kept as plain (`_PLAIN_KEYS`, `_NOT_SUSPECT`): what a new process has."""
    _PLAIN_KEYS.clear()
    _NOT_SUSPECT.clear()


def _suspect(value: str) -> bool:
    """A string PyYAML may read otherwise when it is written plain (see _SUSPECT, _WORDS)."""
    if value in _WORDS:
        return True
    if not value or value[0] not in _SUSPECT or value in _NOT_SUSPECT:
        return False
    return _suspect_match(value)


def _suspect_match(value: str) -> bool:
    """`_suspect` for a string starting with a character of _SUSPECT, not known to be plain."""
    if _SUSPECT[value[0]].match(value):
        return True
    if len(_NOT_SUSPECT) >= _PLAIN_KEYS_KEPT:
        _NOT_SUSPECT.clear()
    _NOT_SUSPECT.add(value)
    return False


def _has_space(value: str) -> bool:
    return any(c.isspace() for c in value)


def _held_plain(value: str, text: str) -> bool:
    """Whether the text may hold `value` as a plain scalar (which PyYAML reads otherwise).
    Without whitespace it is a single plain token, so it is not held plain when every occurrence of
    it in the text is quoted (a plain scalar never starts right after a quote character, and one
    followed by one is longer than `value`)."""
    if _has_space(value):
        return True  # may be a multi-line plain scalar, folded
    occurrences = text.count(value)
    quoted = text.count(f'"{value}"') + text.count(f"'{value}'")
    return occurrences == 0 or occurrences != quoted
