"""Loss parameters in words: a failed validation as one line, a parameter's range for the docs.

:func:`validate_params` is the one place where a :class:`pydantic.ValidationError` of a loss's
parameter model (:mod:`lossearch.losses.params`) becomes a
:class:`~lossearch.errors.LossearchError`, worded from the field's type and constraints:
``loss 'focal': gamma must be >= 0, got -1``, ``loss 'focal': unknown parameter 'gama'
(allowed: weight, gamma, alpha)``. :func:`accepted` and :func:`value_range` are those words.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from lossearch.errors import LossearchError

M = TypeVar("M", bound=BaseModel)

_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def value_range(field: FieldInfo) -> str | None:
    """A number's bounds as the docs write them (``>= 0``, ``> 0``, ``[0, 1)``, ``[0, 1]``);
    None where the field has none."""
    low = high = None
    for c in field.metadata:
        if isinstance(c, (Ge, Gt)):
            low = ("[", ">=", c.ge) if isinstance(c, Ge) else ("(", ">", c.gt)
        elif isinstance(c, (Le, Lt)):
            high = ("]", "<=", c.le) if isinstance(c, Le) else (")", "<", c.lt)
    if low and high:
        return f"{low[0]}{low[2]:g}, {high[2]:g}{high[0]}"
    bound = low or high
    return f"{bound[1]} {bound[2]:g}" if bound else None


def accepted(field: FieldInfo) -> str:
    """The kind of value a field takes: ``a number``, ``null or a number``, ``true or false``
    or ``one of 'present', 'all'``."""
    kind = field.annotation
    if get_origin(kind) is Literal:
        return "one of " + ", ".join(repr(c) for c in get_args(kind))
    if kind is bool:
        return "true or false"
    return "null or a number" if type(None) in get_args(kind) else "a number"


def _order(model: type[BaseModel], error: ErrorDetails) -> int:
    """0 for the weight, 1 for an unknown name, 2 for a value (pydantic keeps field order)."""
    key = error["loc"][0] if error["loc"] else None
    return 0 if key == "weight" else 2 if key in model.model_fields else 1


def _say(model: type[BaseModel], error: ErrorDetails) -> str:
    if not error["loc"]:
        return error["msg"]
    name, kind, got = str(error["loc"][0]), error["type"], error["input"]
    if name not in model.model_fields:  # extra_forbidden, or invalid_key for a non-string
        return f"unknown parameter '{name}' (allowed: {', '.join(model.model_fields)})"
    if kind == "missing":
        return f"missing '{name}'"
    field = model.model_fields[name]
    bounds = value_range(field)
    if kind in _RANGE_ERRORS and bounds:
        what = f"in {bounds}" if bounds[0] in "[(" else bounds
    else:
        what = accepted(field)
    return f"{name} must be {what}, got {got!r}"


def validate_params(loss: str, model: type[M], given: Any) -> M:
    """``model.model_validate(given)``, or one ``LossearchError`` line naming ``loss`` and one
    parameter: a bad ``weight`` first, then an unknown name, then the first bad value."""
    try:
        return model.model_validate(given)
    except ValidationError as err:
        first = min(err.errors(), key=lambda e: _order(model, e))
        raise LossearchError(f"loss '{loss}': {_say(model, first)}") from None
