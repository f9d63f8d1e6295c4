"""Plain JSON/YAML records (nested mappings): look up dotted keys, tell numbers.

(Flattening them: :func:`lossearch.config.flatten`.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def is_number(value: Any) -> bool:
    """True for an int or float that is not a bool (NaN is a number)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def dotted_get(tree: Any, dotted: str) -> Any:
    """``tree["a"]["b"]`` for ``"a.b"``; None where a part is missing or not a mapping."""
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node
