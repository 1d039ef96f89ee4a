"""YAML text -> (python data, node tree with line/column marks), and loc -> position lookups.

pydantic reports errors by path (`('resources', 'gpu')`); users need a line and a column. We parse
once with PyYAML's SafeLoader, keep the composed node tree, and walk it along the error path to
the deepest node that exists. Positions are 1-based, as editors and GitHub annotations count.

Speed: libyaml's `CSafeLoader` (when PyYAML was built with it) composes the same node tree with
the same marks about 20x faster than the pure-Python loader. Its error messages are libyaml's own,
so a document it rejects is parsed again with the pure-Python loader, whose message and position
are the ones reported: diagnostics do not depend on whether libyaml is installed. The two differ
on a few inputs libyaml accepts and PyYAML rejects (a tab after a value, `?` inside flow
collections, `|#`) and on the mark of an empty value (`a:` at the end, `{c: }`); such documents
(`_PURE_ONLY`, or a tree with an empty plain scalar) take the pure-Python path, so the data and
every position stay exactly PyYAML's (a differential fuzz test in tests/config checks it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import yaml


@dataclass(frozen=True)
class Position:
    line: int
    column: int


class YamlSyntaxError(Exception):
    def __init__(self, message: str, position: Position) -> None:
        super().__init__(message)
        self.message = message
        self.position = position


@dataclass(frozen=True)
class Document:
    data: Any
    node: yaml.Node | None
    within_limit: bool = False  # already known to have at most MAX_NODES nodes (see too_complex)


def _pos(mark: Any) -> Position:
    if mark is None:
        return Position(1, 1)
    return Position(int(mark.line) + 1, int(mark.column) + 1)


_TAGS: dict[tuple[str, tuple[bool, bool]], str] = {}  # (scalar, implicit) -> its resolved tag


def _fast_loader() -> type[Any] | None:
    base: type[Any] | None = getattr(yaml, "CSafeLoader", None)
    if base is None:
        return None

    class Loader(base):  # type: ignore[valid-type,misc]
        """libyaml's loader, with each short scalar's tag resolution remembered: libyaml calls the
        Python resolver (a few regular expressions) for every scalar, and a repository's configs
        repeat the same few hundred (`service`, `8000`, `1..`, commands). For SafeLoader the tag is
        a function of (value, implicit flags) alone (no path resolvers), so the memo is exact."""

        def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
            if kind is not yaml.ScalarNode or self.yaml_path_resolvers or len(value) > 128:
                return super().resolve(kind, value, implicit)
            key = (value, implicit)
            tag = _TAGS.get(key)
            if tag is None:
                tag = super().resolve(kind, value, implicit)
                if len(_TAGS) > 50_000:
                    _TAGS.clear()
                _TAGS[key] = tag
            return tag

    return Loader


FAST_LOADER: type[Any] | None = _fast_loader()
# Text where libyaml and PyYAML may disagree: tabs, `?` (flow-context keys), a BOM or a Unicode
# line break inside the text, a comment glued to a block scalar indicator.
_PURE_ONLY = re.compile("[\t?\ufeff\x85\u2028\u2029]|[|>][-+0-9]*#")


def load_document(text: str, *, fast: bool = True) -> Document:
    """Parse one YAML document; raise YamlSyntaxError with the problem's position.
    `fast=False` forces the pure-Python loader (the benchmark's "before" path)."""
    if fast and FAST_LOADER is not None and not _PURE_ONLY.search(text):
        loader = FAST_LOADER(text)
        try:
            node = loader.get_single_node()
            if not _has_empty_scalar(node):  # (a walk that also bounds the node count)
                return Document(_construct(loader, node), node, within_limit=True)
        except (yaml.YAMLError, RecursionError):
            pass  # report the pure-Python loader's message and position, below
        finally:
            loader.dispose()
    return _load_pure(text)


_STR, _MAP, _SEQ = "tag:yaml.org,2002:str", "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"
_SCALARS: dict[str, Callable[[Any, yaml.Node], Any]] = {
    "tag:yaml.org,2002:null": lambda loader, node: None,
    "tag:yaml.org,2002:bool": lambda loader, node: loader.construct_yaml_bool(node),
    "tag:yaml.org,2002:int": lambda loader, node: loader.construct_yaml_int(node),
    "tag:yaml.org,2002:float": lambda loader, node: loader.construct_yaml_float(node),
}


class _Unusual(Exception):
    """A node `_construct` leaves to PyYAML's constructor (merge keys, timestamps, sets, ...)."""


def _construct(loader: Any, node: yaml.Node | None) -> Any:
    """What `loader.construct_document(node)` returns, built directly for the nodes configs are
    made of (mappings with scalar keys, sequences, strings, numbers, booleans, nulls), which skips
    the constructor's per-node bookkeeping; anything else goes to the constructor itself. Aliases
    give the same object, as there."""
    if node is None:
        return None
    memo: dict[int, Any] = {}

    def build(n: yaml.Node) -> Any:
        tag = n.tag
        if isinstance(n, yaml.ScalarNode):
            if tag == _STR:
                return n.value
            scalar = _SCALARS.get(tag)
            if scalar is None:
                raise _Unusual(tag)
            return scalar(loader, n)
        known = memo.get(id(n))
        if known is not None:
            return known
        if tag == _SEQ and isinstance(n, yaml.SequenceNode):
            items: list[Any] = []
            memo[id(n)] = items
            items.extend(build(child) for child in n.value)
            return items
        if tag == _MAP and isinstance(n, yaml.MappingNode):
            mapping: dict[Any, Any] = {}
            memo[id(n)] = mapping
            for key, value in n.value:
                if not isinstance(key, yaml.ScalarNode) or key.tag not in _SIMPLE_KEYS:
                    raise _Unusual(key.tag)  # merge (`<<`) and value (`=`) keys, complex keys
                mapping[build(key)] = build(value)
            return mapping
        raise _Unusual(tag)

    try:
        return build(node)
    except _Unusual:
        return loader.construct_document(node)


_SIMPLE_KEYS = frozenset({_STR, *_SCALARS})


def _has_empty_scalar(node: yaml.Node | None, limit: int = 50_000) -> bool:  # MAX_NODES
    """True for a tree with an implicit empty value (whose mark libyaml places differently), or one
    too large to check (an alias bomb: the pure-Python path reports it the same as before)."""
    try:
        return any(
            isinstance(n, yaml.ScalarNode) and n.value == "" and not n.style  # plain (libyaml: style "")
            for n in _walk(node, limit)
        )
    except _TooMany:
        return True


def _load_pure(text: str) -> Document:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        message = " ".join(part for part in (e.context, e.problem) if part) or "invalid YAML"
        raise YamlSyntaxError(f"YAML syntax error: {message}", _pos(mark)) from e
    except yaml.YAMLError as e:
        raise YamlSyntaxError(f"YAML error: {e}", Position(1, 1)) from e
    except RecursionError as e:
        raise YamlSyntaxError("the document is nested too deeply", Position(1, 1)) from e
    finally:
        loader.dispose()
    return Document(data, node)


MAX_NODES = 50_000


class _TooMany(Exception):
    pass


def _walk(node: yaml.Node | None, limit: int) -> Iterator[yaml.Node]:
    """Every node of the tree (an alias's target each time it is used); _TooMany past `limit`."""
    stack: list[yaml.Node] = [node] if node is not None else []
    seen = 0
    while stack:
        current = stack.pop()
        seen += 1
        if seen > limit:
            raise _TooMany
        yield current
        if isinstance(current, yaml.MappingNode):
            for k, v in current.value:
                stack.append(k)
                stack.append(v)
        elif isinstance(current, yaml.SequenceNode):
            stack.extend(current.value)


def too_complex(node: yaml.Node | None, limit: int = MAX_NODES) -> bool:
    """True when the document expands to more than `limit` nodes (aliases counted every time
    they are used), so an alias bomb cannot make validation take forever."""
    try:
        for _ in _walk(node, limit):
            pass
    except _TooMany:
        return True
    return False


def mapping_items(node: yaml.Node | None) -> Iterator[tuple[yaml.Node, yaml.Node]]:
    if isinstance(node, yaml.MappingNode):
        yield from node.value


def key_node(node: yaml.Node | None, key: str) -> yaml.Node | None:
    for k, _v in mapping_items(node):
        if isinstance(k, yaml.ScalarNode) and k.value == key:
            return k
    return None


def value_node(node: yaml.Node | None, key: str | int) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        found = None
        for k, v in node.value:  # the last duplicate wins, as in the constructed data
            if isinstance(k, yaml.ScalarNode) and k.value == str(key):
                found = v
        return found
    if isinstance(node, yaml.SequenceNode) and isinstance(key, int) and 0 <= key < len(node.value):
        child: yaml.Node = node.value[key]
        return child
    return None


def node_position(node: yaml.Node | None) -> Position:
    return _pos(node.start_mark if node is not None else None)


def locate(
    root: yaml.Node | None, loc: Sequence[str | int], *, key: bool = False
) -> tuple[Position, list[str | int]]:
    """Position of the deepest node along `loc` and the part of `loc` that matched.

    Elements that are not in the tree (pydantic's union tags like `function-after[...]`) are
    skipped; a final missing key reports the position of its parent mapping. With `key=True`,
    a matched final mapping key reports the key itself (for unknown-key errors).
    """
    node = root
    matched: list[str | int] = []
    for index, element in enumerate(loc):
        child = value_node(node, element)
        if child is None:
            continue
        if key and index == len(loc) - 1 and isinstance(node, yaml.MappingNode):
            return node_position(key_node(node, str(element))), [*matched, element]
        node = child
        matched.append(element)
    return node_position(node), matched


def duplicate_keys(
    node: yaml.Node | None, path: tuple[str | int, ...] = ()
) -> Iterator[tuple[tuple[str | int, ...], yaml.Node]]:
    """Every repeated mapping key in the tree (YAML would silently keep the last one)."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            name = k.value if isinstance(k, yaml.ScalarNode) else None
            if name is not None:
                if name in seen:
                    yield (*path, name), k
                seen.add(name)
            yield from duplicate_keys(v, (*path, name if name is not None else "?"))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from duplicate_keys(item, (*path, i))
