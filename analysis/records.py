"""Plain JSON/YAML records (nested mappings): flatten them, look up dotted keys, tell numbers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd


def is_number(value: Any) -> bool:
    """True for an int or float that is not a bool (NaN is a number)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def flatten(record: Mapping[str, Any], sep: str) -> dict[str, Any]:
    """``record`` with nested mappings flattened into ``outer<sep>inner`` keys.

    A record without nested mappings (the common case: Tune's results and trial configs are
    flat) is returned as a plain dict as it is; otherwise :func:`pandas.json_normalize` does
    the flattening (an empty nested mapping contributes no key).
    """
    if not any(isinstance(v, Mapping) for v in record.values()):
        return dict(record)
    return pd.json_normalize(dict(record), sep=sep).to_dict(orient="records")[0]


def dotted_get(tree: Any, dotted: str) -> Any:
    """``tree["a"]["b"]`` for ``"a.b"``; None where a part is missing or not a mapping."""
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node
