"""Each loss's parameters as a pydantic model: names, defaults, types and ranges in one place.

A model per loss (:class:`FocalParams`, ...) holds exactly the keyword arguments its
``*_from_log_probs`` entry point takes, with their defaults; :func:`with_weight` adds the
``weight`` of a loss-spec component. The value types a spec may use:

- :data:`Number`: a finite int, float or numeric string (YAML reads ``1e-5`` as a string),
  never a bool; comes out a float. Ranges are ``Field(ge=..., gt=..., le=..., lt=...)``.
- ``Number | None``, ``StrictBool`` (``true``/``false`` only) and ``Literal[...]`` choices.

Unknown keys are refused (``extra="forbid"``). :mod:`lossearch.losses.param_text` words a
failed validation as one line and describes a parameter's range for the docs.
"""

from __future__ import annotations

import functools
import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, create_model


def _finite(value: Any) -> Any:
    """Refuse what a lax float would take but a parameter must not: a bool, a non-finite
    number or numeric string. Anything else goes on unchanged (the error keeps the raw input)."""
    if isinstance(value, bool):
        raise ValueError("a bool is not a number")
    if isinstance(value, (int, float, str)):
        try:
            number = float(value)
        except (ValueError, OverflowError):
            return value  # pydantic refuses it as not a number
        if not math.isfinite(number):
            raise ValueError("not a finite number")
    return value


#: A finite number; ints and numeric strings are accepted and come out as floats.
Number = Annotated[float, BeforeValidator(_finite)]

#: Which classes a set-level loss averages over: those present in the batch, or all ``V``.
Classes = Literal["present", "all"]


class LossParams(BaseModel):
    """The base of every loss's parameter model (a loss without parameters uses it as is)."""

    model_config = ConfigDict(extra="forbid")


class CeParams(LossParams):
    label_smoothing: Number = Field(0.0, ge=0, lt=1)


class FocalParams(LossParams):
    gamma: Number = Field(2.0, ge=0)
    alpha: Number | None = Field(None, ge=0, le=1)


class LovaszParams(LossParams):
    classes: Classes = "present"


class GdiceParams(LossParams):
    classes: Classes = "present"
    smooth: Number = Field(1e-5, ge=0)
    batch: StrictBool = True
    variant: Literal["standard", "paper"] = "standard"


class SadlParams(LossParams):
    alpha: Number = Field(1.0, ge=0)
    gamma: Number = Field(1.0, ge=0)


class TverskyParams(LossParams):
    alpha: Number = Field(0.5, ge=0, le=1)
    beta: Number = Field(0.5, ge=0, le=1)
    classes: Classes = "present"
    smooth: Number = Field(1e-5, ge=0)


class Poly1Params(LossParams):
    epsilon: Number = Field(1.0, ge=-1)


class ProbPowerParams(LossParams):
    alpha: Number = Field(1.0, gt=0)


class _Weight(BaseModel):  # not a LossParams: the MRO of (LossParams, _Weight) must exist
    model_config = ConfigDict(extra="forbid")
    weight: Number = Field(ge=0)


@functools.cache
def with_weight(params: type[LossParams]) -> type[LossParams]:
    """The model of a loss-spec component: a required ``weight >= 0``, then ``params``' fields
    in their order (pydantic orders fields from the last base in the MRO to the first)."""
    return create_model(f"Weighted{params.__name__}", __base__=(params, _Weight))
