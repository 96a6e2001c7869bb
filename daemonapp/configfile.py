"""Read a configuration file's YAML, bounded, keeping the line and source text of each key.

A hostile or mistaken file fails fast with one message, never a hang, a memory blow-up
or a traceback (DESIGN §3): the file is at most `MAX_FILE_BYTES`, nesting at most
`MAX_DEPTH` levels, and aliases may stand for at most `MAX_ALIASED_NODES` nodes in
all (a "billion laughs" file is refused while it is parsed, before anything walks
or prints the values it would expand to); an alias inside the node it names is refused.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

__all__ = [
    "MAX_ALIASED_NODES",
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "ConfigFileError",
    "LineMapping",
    "LineSequence",
    "read_document",
]

#: The largest configuration file read (1 MiB): a real one is a few KB.
MAX_FILE_BYTES = 1 << 20
#: The deepest nesting of mappings and sequences: a real file needs fewer than ten.
MAX_DEPTH = 64
#: How many nodes all aliases together may stand for (merge keys and shared
#: settings stay far below; a ten-level alias bomb would need billions).
MAX_ALIASED_NODES = 100_000


class ConfigFileError(Exception):
    """The file cannot be read as a bounded YAML document: ``line`` (or None) and why."""

    def __init__(self, line: int | None, problem: str) -> None:
        super().__init__(problem)
        self.line = line
        self.problem = problem


class LineMapping(dict[Any, Any]):
    """A YAML mapping that remembers where each key was and its scalars' source text."""

    def __init__(self, line: int = 0) -> None:
        super().__init__()
        self.line = line
        self.key_lines: dict[Any, int] = {}
        self.texts: dict[Any, str] = {}
        self.duplicates: list[tuple[Any, int]] = []


class LineSequence(list[Any]):
    """A YAML sequence that remembers the line of each item."""

    def __init__(self, line: int = 0) -> None:
        super().__init__()
        self.line = line
        self.lines: list[int] = []


#: The longest integer read (int() refuses past 4,300 digits; no setting needs 100).
MAX_INT_DIGITS = 100


class _Bounds(yaml.MarkedYAMLError):
    """A bound of this module was crossed at ``problem_mark``."""


class _BoundedComposer(Composer):
    """yaml's composer, bounding nesting and alias expansion while it builds the node
    graph (before anything walks or prints the values)."""

    def __init__(self) -> None:
        super().__init__()
        self._depth = 0
        self._nodes = 0      # nodes of the document as if every alias were written out
        self._aliased = 0    # how many of them aliases stand for
        self._sizes: dict[int, int] = {}  # id(node) -> its expanded size, once complete

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(AliasEvent):  # type: ignore[attr-defined]
            mark = self.peek_event().start_mark  # type: ignore[attr-defined]
            node = super().compose_node(parent, index)
            size = self._sizes.get(id(node))
            if size is None:  # its node is still being composed: a structure inside itself
                raise _Bounds(None, None, "an alias inside the node it names (a recursive "
                              "structure); write the value out instead", mark)
            self._nodes += size
            self._aliased += size
            if self._aliased > MAX_ALIASED_NODES:
                raise _Bounds(None, None, f"aliases here stand for more than "
                              f"{MAX_ALIASED_NODES:,} values in all (an alias bomb?); "
                              "write the values out or use fewer aliases", mark)
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Bounds(None, None, f"nested deeper than {MAX_DEPTH} levels",
                          self.peek_event().start_mark)  # type: ignore[attr-defined]
        before = self._nodes
        node = super().compose_node(parent, index)
        self._depth -= 1
        self._nodes += 1
        if node is not None:
            self._sizes[id(node)] = self._nodes - before
        return node


class _Constructor(SafeConstructor):
    """yaml.safe_load's constructor, building LineMapping and LineSequence."""

    def construct_yaml_int(self, node: Any) -> int:
        # int() refuses more than 4,300 digits (ValueError): a config error at its line.
        text = str(node.value).replace("_", "")
        if len(text) > MAX_INT_DIGITS:
            raise _Bounds(None, None, f"a number of {len(text):,} digits; at most "
                          f"{MAX_INT_DIGITS} are read", node.start_mark)
        value: int = super().construct_yaml_int(node)
        return value


_Constructor.add_constructor(  # type: ignore[type-var]  # yaml-stubs: the class itself
    "tag:yaml.org,2002:int", _Constructor.construct_yaml_int)


class _Loader(_BoundedComposer, Reader, Scanner, Parser, _Constructor, Resolver):
    """yaml.SafeLoader (pure Python) with the bounded composer and line-keeping values."""

    def __init__(self, stream: str) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        _BoundedComposer.__init__(self)
        _Constructor.__init__(self)
        Resolver.__init__(self)


_LOADERS: list[type[Any]] = [_Loader]
try:
    # libyaml's event parser, when PyYAML has it, reads a file about three times as
    # fast; the composer (with its bounds) and the constructor stay the ones above.
    from yaml._yaml import CParser

    class _CLoader(_BoundedComposer, CParser, _Constructor, Resolver):  # type: ignore[misc]
        """_Loader with libyaml's event parser."""

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            _BoundedComposer.__init__(self)
            _Constructor.__init__(self)
            Resolver.__init__(self)

    _LOADERS.insert(0, _CLoader)
except ImportError:  # PyYAML built without libyaml
    pass


def _construct_map(loader: _Constructor, node: MappingNode) -> Iterable[LineMapping]:
    data = LineMapping(node.start_mark.line + 1)
    yield data
    seen: set[Any] = set()
    for key_node, _value_node in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node)
        try:
            if key in seen:
                data.duplicates.append((key, key_node.start_mark.line + 1))
            seen.add(key)
        except TypeError:
            pass  # an unhashable key: construct_mapping reports it
    data.update(loader.construct_mapping(node))
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node)
        try:
            data.key_lines[key] = key_node.start_mark.line + 1
            if isinstance(value_node, ScalarNode):
                data.texts[key] = value_node.value
        except TypeError:
            pass


def _construct_seq(loader: _Constructor, node: SequenceNode) -> Iterable[LineSequence]:
    data = LineSequence(node.start_mark.line + 1)
    data.lines = [item.start_mark.line + 1 for item in node.value]
    yield data
    data.extend(loader.construct_sequence(node))


_Constructor.add_constructor("tag:yaml.org,2002:map", _construct_map)  # type: ignore[arg-type,type-var]
_Constructor.add_constructor("tag:yaml.org,2002:seq", _construct_seq)  # type: ignore[arg-type,type-var]


def _read_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            # fstat refuses a 100 MB file without reading it; the bounded read covers
            # what has no size (a pipe, /dev/zero).
            data = f.read(MAX_FILE_BYTES + 1) if size <= MAX_FILE_BYTES else b""
    except OSError as e:
        raise ConfigFileError(None, f"cannot read the configuration: {e.strerror or e}") \
            from None
    size = max(size, len(data))
    if size > MAX_FILE_BYTES:
        shown = f"{size:,} bytes" if len(data) <= MAX_FILE_BYTES else "more than 1 MiB"
        raise ConfigFileError(None, f"the configuration is {shown}; daemonapp reads at most "
                                    f"1 MiB ({MAX_FILE_BYTES:,} bytes): is this the right file?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigFileError(None, f"the configuration is not UTF-8 text: {e}") from None


def read_document(path: str) -> Any:
    """The YAML document of ``path`` (None when empty), with LineMapping and
    LineSequence for its mappings and sequences; ConfigFileError when it cannot be
    read, is no YAML, or crosses a bound."""
    text = _read_text(path)
    try:
        return yaml.load(text, Loader=_LOADERS[0])  # noqa: S506 - SafeLoader's parts
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = " ".join(part for part in (e.context, e.problem) if part)
        prefix = "" if isinstance(e, _Bounds) else "invalid YAML: "
        raise ConfigFileError(line, prefix + problem) from None
    except yaml.YAMLError as e:
        raise ConfigFileError(None, f"invalid YAML: {e}") from None
    except RecursionError:
        # A bound above should stop any nesting first; this is the last line of defence.
        raise ConfigFileError(None, "the YAML is nested too deeply") from None
