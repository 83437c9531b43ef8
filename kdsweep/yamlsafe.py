"""Safe YAML loading that refuses duplicate keys (PyYAML silently keeps the last one)."""

from __future__ import annotations

import yaml


class _StrictSafeLoader(yaml.SafeLoader):
    pass


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


def load_yaml(text: str):
    """Parse YAML with the safe loader (no Python objects, no code) and duplicate-key detection."""
    return yaml.load(text, Loader=_StrictSafeLoader)  # noqa: S506 - a SafeLoader subclass


def parse_value(text: str):
    """A `--set` value: YAML scalar or flow collection (`2`, `0.01`, `[0, 1]`, `true`, `l2`)."""
    return yaml.safe_load(text)
