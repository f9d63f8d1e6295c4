"""Names a package exports but imports on first access (PEP 562 ``__getattr__``).

A package whose ``__init__`` would otherwise import heavy libraries for every user (torch for
the loss functions, SciPy and matplotlib for analysis) lists those names here instead:
``__getattr__, __dir__ = lazy_exports(__name__, {"name": "submodule"}, globals())``.
A lazily exported name must not also be a submodule's name: importing that submodule sets
the package attribute to the module, and the function would no longer be reached.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, names: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``name`` comes from
    ``package.<names[name]>`` when first looked up; ``dir()`` lists them with ``namespace``'s
    eager names."""

    def getattr_(name: str) -> Any:
        if name in names:
            return getattr(importlib.import_module(f"{package}.{names[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def dir_() -> list[str]:
        return sorted([*namespace, *names])

    return getattr_, dir_
