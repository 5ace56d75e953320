"""The recipe keys of a schema as `--help` text: key, type, default and one line of meaning per key.

Generated from the typed schema itself (`ssl_vit.config.describe`: the dataclass fields, their types and
defaults, and the help each field carries), so the help cannot drift from what the loader accepts.
"""
from __future__ import annotations

import textwrap
from typing import Any

WIDTH = 110


def keys_help(schema: type, title: str) -> str:
    """`title`, then one entry per dotted key: `key  type = default` and its meaning indented below."""
    from ..config import describe

    lines = [title]
    for key, type_name, default, meaning in describe(schema):
        lines.append(f"  {key}  {type_name} = {_shown(default)}")
        if meaning:
            lines += textwrap.wrap(meaning, WIDTH, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines)


def _shown(value: Any) -> str:
    """A default as a recipe writes it: YAML's null/true/false, lists for tuples, quotes for empty strings."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        value = list(value)
    if value == "":
        return '""'
    return str(value)
