"""Strict, safe YAML with positions: the first layer of playbook validation.

PyYAML needs three guard rails (RELIABILITY principle 9): duplicate keys are errors (not "last
wins"), YAML 1.1 booleans stay strings (`country: { eq: NO }` is Norway), and file size and alias
expansion are bounded (billion laughs). Only the safe constructors exist, so `!!python/object` is
refused. Every node's position is kept in a `SourceMap` so later layers can name file:line:col.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.errors import Issue, Location

MAX_BYTES = 1_000_000
MAX_NODES = 100_000

PathKey = tuple[str | int, ...]


class StrictLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core booleans and numbers (no `1:30` = 90) and no implicit dates."""


_REPLACED = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:int",
             "tag:yaml.org,2002:float"}


StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers
            if tag not in _REPLACED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?(?:0|[1-9][0-9]*)|0x[0-9a-fA-F]+)$"),
    list("-+0123456789"),
)
StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+(?=[eE]))(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


class _FastLoader(getattr(yaml, "CSafeLoader", StrictLoader)):  # type: ignore[misc]
    """StrictLoader's rules on libyaml's parser (when PyYAML has it): about 5x faster.

    Tags are resolved by the same Python resolver table, so both read the same values; a file
    libyaml refuses is parsed again by StrictLoader, whose messages say what it found instead.
    """

    yaml_implicit_resolvers = StrictLoader.yaml_implicit_resolvers


@dataclass(frozen=True)
class SourceMap:
    """Positions of keys and values by document path, 1-based like editors show them."""

    file: str
    keys: dict[PathKey, tuple[int, int]] = field(default_factory=dict)
    values: dict[PathKey, tuple[int, int]] = field(default_factory=dict)
    block_scalars: set[PathKey] = field(default_factory=set)  # `|` / `>`: text starts a line later

    def locate(self, path: PathKey, at: str = "value") -> Location:
        """The position of `path`, falling back to its nearest ancestor that has one."""
        table = self.keys if at == "key" else self.values
        probe = tuple(path)
        while probe:
            if probe in table:
                return Location(self.file, *table[probe])
            if probe in self.keys:
                return Location(self.file, *self.keys[probe])
            probe = probe[:-1]
        return Location(self.file, *self.values.get((), (1, 1)))

    def locate_line(self, path: PathKey, line_offset: int) -> Location:
        """The file line of line `line_offset` (0-based) inside the text value at `path`."""
        start = self.locate(path)
        first = start.line + (1 if tuple(path) in self.block_scalars else 0)
        return Location(self.file, first + line_offset, 1)


@dataclass(frozen=True)
class Document:
    """A loaded YAML document: its data, positions, text and the file it came from."""

    data: Any
    source_map: SourceMap
    text: str


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


class _Walker:
    """Builds the SourceMap and finds duplicate keys and alias bombs on the composed node tree."""

    def __init__(self, file: str) -> None:
        self.source_map = SourceMap(file)
        self.issues: list[Issue] = []
        self.count = 0

    def walk(self, node: yaml.Node, path: PathKey) -> None:
        self.count += 1
        if self.count > MAX_NODES:
            raise _TooLarge(node)
        self.source_map.values.setdefault(path, _mark(node))
        if isinstance(node, yaml.ScalarNode) and node.style in ("|", ">"):
            self.source_map.block_scalars.add(path)
        if isinstance(node, yaml.MappingNode):
            self._walk_mapping(node, path)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self.walk(item, (*path, index))

    def _walk_mapping(self, node: yaml.MappingNode, path: PathKey) -> None:
        seen: dict[Any, tuple[int, int]] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else repr(key_node)
            if key in seen:
                line, column = _mark(key_node)
                self.issues.append(Issue(
                    Location(self.source_map.file, line, column), dotted((*path, key)),
                    f"duplicate key {key!r} (first at line {seen[key][0]})"))
                continue
            seen[key] = _mark(key_node)
            self.source_map.keys.setdefault((*path, key), _mark(key_node))
            self.walk(value_node, (*path, key))


class _TooLarge(Exception):
    def __init__(self, node: yaml.Node) -> None:
        super().__init__()
        self.node = node


def dotted(path: PathKey) -> str:
    """`("when", 2, "any")` -> `when[2].any`, the path notation used in every message."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _yaml_issue(file: str, exc: yaml.YAMLError) -> Issue:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    location = Location(file, mark.line + 1, mark.column + 1) if mark else Location(file)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    message = f"YAML error: {problem}" + (f" ({context})" if context else "")
    return Issue(location, "", message)


def load_yaml(text: str, file: str) -> tuple[Document | None, list[Issue]]:
    """Parse one YAML document strictly; on any problem the document is None or issues are set."""
    if len(text.encode("utf-8")) > MAX_BYTES:
        return None, [Issue(Location(file), "", f"file is larger than {MAX_BYTES:,} bytes; refused")]
    try:
        node = yaml.compose(text, Loader=_FastLoader)
    except yaml.YAMLError:
        try:
            node = yaml.compose(text, Loader=StrictLoader)
        except yaml.YAMLError as exc:
            return None, [_yaml_issue(file, exc)]
    if node is None:
        return None, [Issue(Location(file, 1, 1), "", "the file is empty")]
    walker = _Walker(file)
    try:
        walker.walk(node, ())
    except _TooLarge as exc:
        line, column = _mark(exc.node)
        message = f"document expands to more than {MAX_NODES:,} nodes (alias bomb?); refused"
        return None, [Issue(Location(file, line, column), "", message)]
    try:  # construct from the tree already composed: one parse, not two
        data = _FastLoader("").construct_document(node)
    except yaml.YAMLError as exc:
        return None, [*walker.issues, _yaml_issue(file, exc)]
    return Document(data, walker.source_map, text), walker.issues


def load_yaml_file(path: Path) -> tuple[Document | None, list[Issue]]:
    """Read and parse a file, refusing oversized files before reading them whole."""
    file = str(path)
    try:
        if path.stat().st_size > MAX_BYTES:
            return None, [Issue(Location(file), "", f"file is larger than {MAX_BYTES:,} bytes; refused")]
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [Issue(Location(file), "", f"cannot read file: {exc}")]
    return load_yaml(text, file)
