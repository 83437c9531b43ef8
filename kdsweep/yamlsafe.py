"""Safe YAML loading for search spaces and `--set` values: no Python objects, no duplicate keys (PyYAML silently
keeps the last one), bounded documents, and floats written the way people write them.

Bounds, because a YAML file is input from anyone: aliases (`&a` / `*a`) share one value, so a few lines can stand
for billions of values once anything walks them (validation, error messages); deep nesting exhausts Python's
recursion; PyYAML's parser takes ~40 us a value, so a huge file takes minutes. A document may be at most
MAX_CHARACTERS long, hold at most MAX_VALUES values counted with every alias expanded, and nest at most MAX_DEPTH
levels, all far beyond what a search space needs (the full grid: ~2 kB, ~300 values, 4 levels). Values and depth
are counted while the document is composed and again on the composed node graph, before any Python value is built.
"""

from __future__ import annotations

import re

import yaml

MAX_CHARACTERS = 1_000_000
MAX_DEPTH = 32  # nesting levels of mappings and lists, aliases expanded
MAX_VALUES = 20_000  # scalars, lists and mappings, aliases expanded

# YAML 1.1 (PyYAML) reads `5e-2` and `1e3` as strings: its floats need a dot. YAML 1.2 and every user mean numbers.
_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


class LimitExceeded(yaml.composer.ComposerError):
    """A document beyond the bounds above (not a YAML syntax error)."""

    def __init__(self, problem: str, mark=None):
        super().__init__(None, None, problem, mark)


class _StrictSafeLoader(yaml.SafeLoader):
    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        self._values = 0

    def compose_node(self, parent, index):
        # Bounded before recursing further (the composer itself is recursive) and before parsing on.
        self._depth += 1
        self._values += 1
        try:
            if self._depth > MAX_DEPTH:
                raise LimitExceeded(f"nested deeper than {MAX_DEPTH} levels of lists and mappings",
                                    self.peek_event().start_mark)
            if self._values > MAX_VALUES:
                raise LimitExceeded(f"more than {MAX_VALUES:,} values", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            _check_expanded_size(node)
        return node


def _check_expanded_size(root: yaml.Node) -> None:
    """Raise LimitExceeded when the node graph, aliases expanded, exceeds MAX_VALUES values or MAX_DEPTH levels,
    or refers to itself. Iterative and memoised per node: the cost is the graph's size, not the expanded size."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    stack = [(root, False)]
    visiting = set()
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in size:
            continue
        children = _children(node)
        if not children_done:
            if key in visiting:
                raise LimitExceeded("an alias refers to the value that contains it", node.start_mark)
            visiting.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in size)
            continue
        visiting.discard(key)
        size[key] = 1 + sum(size[id(c)] for c in children)
        depth[key] = 1 + max((depth[id(c)] for c in children), default=0)
        if size[key] > MAX_VALUES:
            raise LimitExceeded(f"more than {MAX_VALUES:,} values once its aliases are expanded", node.start_mark)
        if depth[key] > MAX_DEPTH:
            raise LimitExceeded(f"nested deeper than {MAX_DEPTH} levels once its aliases are expanded", node.start_mark)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None,
                f"duplicate key '{key}' (first at line {seen[key] + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_StrictSafeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)
# Appended after the built-in resolvers, so integers stay integers: only exponent forms are new floats.
_StrictSafeLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))


def load_yaml(text: str):
    """Parse YAML with the bounded safe loader (no Python objects, no code) and duplicate-key detection."""
    if len(text) > MAX_CHARACTERS:
        raise LimitExceeded(f"{len(text):,} characters long, over the limit of {MAX_CHARACTERS:,}")
    return yaml.load(text, Loader=_StrictSafeLoader)  # noqa: S506 - a SafeLoader subclass


def parse_value(text: str):
    """A `--set` value: YAML scalar or flow collection (`2`, `0.01`, `5e-2`, `[0, 1]`, `true`, `l2`)."""
    return load_yaml(text)


def yaml_problem(err: yaml.YAMLError) -> str:
    """What is wrong, in PyYAML's words, without its position (the caller names the file and line)."""
    return getattr(err, "problem", None) or str(err).splitlines()[0]


def excerpt(text: str, limit: int = 60) -> str:
    """`text` quoted, cut to `limit` characters with its full length named: for messages about huge values."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text):,} characters)"
