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
  PyYAML refuses, a lone CR, a `:` starting a flow node or a line of a flow collection, a block
  scalar ending the text without a line break, `.inf`/`.nan` spellings, and everything the libyaml
  path leaves to the pure-Python loader (yamldoc._PURE_ONLY: tabs, `?`, `|#`, ...);
- a walk of the result (`_count`) notes every string that PyYAML's resolvers would read as another
  type when written plain (`yes`, `1:30`, `2024-01-01`, `1_000`, `<<` — yaml-rs never merges —,
  `=`) or that PyYAML would not read as a plain scalar at all (`>x`, `|`, `- x`); one is refused
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
_ASCII_OK = bytes(range(0x20, 0x7F)).replace(b"?", b"") + b"\n\r"  # the same test on ASCII text
_BLOCK_COMMENT = re.compile(r"[|>][-+0-9]*#")  # yamldoc._PURE_ONLY's other half
_NODE_PROPERTY = re.compile(r"[!&*]")  # a tag, an anchor or an alias, when it starts a node
_FLOW_COLON = re.compile(r"[\[{,:]\s*:\S")  # `[:x]`: a plain scalar in yaml-rs, an error in PyYAML
_COLON_FIRST = re.compile(r"\n *:")  # `{x\n: y}`: a key's `:` on the next line (PyYAML: an error)
_INF_NAN = re.compile(r"\.[iInN][nNaA][fFnN]")  # yaml-rs reads `.INf` as infinity, PyYAML not
# Number spellings yaml-rs and PyYAML read differently (`_numbers_refused`): 017 (octal in
# YAML 1.1), 0o17, 09, 0X1F, _1, ._1 where a scalar starts; +_1, -.5; 1e3 (a string in PyYAML).
_LEADING = re.compile(r"0[0-9_oOXB]|_[._]*[0-9]")
_EXPONENT = re.compile(r"[0-9._][eE][-+]?[0-9_]")
_BEFORE_SCALAR = " \n\r[{,:"  # what may come right before a scalar that starts a node


def _refused(text: str) -> bool:
    """The text check: True when the document may read differently in yaml-rs and PyYAML."""
    if text.isascii():
        if text.encode("ascii").translate(None, _ASCII_OK):
            return True
    elif _REFUSED_CHARS.search(text):
        return True
    if "#" in text and _BLOCK_COMMENT.search(text):
        return True
    if "\n%" in text or "\n---" in text or "\n..." in text or text.startswith(("%", "...")):
        return True  # a directive, a second document or a document end
    if not text.endswith("\n") and ("|" in text or ">" in text):
        return True  # a block scalar at the end of the text: yaml-rs adds a line break
    if "\r" in text and text.count("\r") != text.count("\r\n"):
        return True  # a line break PyYAML reads and yaml-rs does not
    if ("[" in text or "{" in text) and (_FLOW_COLON.search(text) or _COLON_FIRST.search(text)):
        return True
    if _INF_NAN.search(text):
        return True
    return any(_node_start(text, m.start()) for m in _NODE_PROPERTY.finditer(text))


def _numbers_refused(text: str) -> bool:
    """The number spellings check (needed only when the data holds a number)."""
    if "-." in text or "+." in text or "-_" in text or "+_" in text or _EXPONENT.search(text):
        return True
    for m in _LEADING.finditer(text):
        at = m.start()
        while at > 0 and text[at - 1] in "._":
            at -= 1
        if at > 0 and text[at - 1] in "-+":
            at -= 1
        if at == 0 or text[at - 1] in _BEFORE_SCALAR:
            return True
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
_SUSPECT.update({first: re.compile(rf"\{first}(?:\s|$)") for first in "?:"})
_SUSPECT.update({first: re.compile("") for first in "|>%@`"})
_SUSPECT["\n"] = re.compile("\n+$")
_BOOL_WORDS = "yes Yes YES no No NO true True TRUE false False FALSE on On ON off Off OFF"
_WORDS = frozenset([*_BOOL_WORDS.split(), "null", "Null", "NULL", "~", "<<", "=", "!", "&", "*"])


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
    numbers = False
    for item in found:
        if type(item) is str:
            if _held_plain(item, text):
                return MISS
        else:
            numbers = True
    if numbers and _numbers_refused(text):
        return MISS
    return data


def _count(
    value: Any,
    depth: int,
    found: list[Any],
    _words: frozenset[str] = _WORDS,
    _suspect: dict[str, re.Pattern[str]] = _SUSPECT,
) -> int:
    """Nodes in `value` (as yamldoc counts them); every suspect string (see _SUSPECT) and every
    number is added to `found`; _Refused for anything else unusual."""
    kind = type(value)
    if kind is str:
        if value in _words or (value and value[0] in _suspect and _suspect[value[0]].match(value)):
            found.append(value)
        return 1
    if kind is dict:
        if depth > MAX_DEPTH:
            raise _Refused
        nodes = 1
        for key, item in value.items():
            if type(key) is not str or (not key.isidentifier() and _has_space(key)):
                raise _Refused  # a complex key, or one on two lines (PyYAML: an error)
            if key in _words or (key and key[0] in _suspect and _suspect[key[0]].match(key)):
                found.append(key)
            nodes += 1 + _count(item, depth + 1, found)
        return nodes
    if kind is list:
        if depth > MAX_DEPTH:
            raise _Refused
        nodes = 1
        for item in value:
            nodes += _count(item, depth + 1, found)
        return nodes
    if kind is int or kind is float:
        found.append(0)
    elif kind is not bool and value is not None:
        raise _Refused  # a tuple (complex key), a date, bytes...
    return 1


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
