"""The search-space file's schema: pydantic models of its four sections.

:func:`parse_space_file` validates a loaded YAML mapping against :class:`SpaceFile` and
raises a one-line :class:`~lossearch.errors.LossearchError` naming the offending key
(``config key 'search.samplr': unknown key``, the training config's format). A parameter's
range is checked by building its Optuna distribution, so Optuna's own errors name bad ranges.
What the sections mean, and the checks that need the training config, are in
:mod:`lossearch.search.space`.
"""

from __future__ import annotations

import warnings
from typing import Annotated, Any, Literal

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    StrictBool,
    StrictFloat,
    field_validator,
    model_validator,
    with_config,
)
from typing_extensions import TypedDict

from lossearch.config import validate_as
from lossearch.search.trial_config import LOSS_FAMILIES


def _scalar(value: Any) -> Any:
    if value is not None and not isinstance(value, (bool, int, float, str)):
        raise ValueError(f"choice {value!r} is not a scalar (null, bool, number or string)")
    return value


def _none_as_empty(value: Any) -> Any:
    return {} if value is None else value


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ParamSpec(_Schema):
    """One parameter: a fixed ``value`` (any non-mapping is one), ``choices``, or a range
    ``low``/``high`` with ``type`` (float or int), ``log`` and ``step``."""

    value: Any = None
    choices: list[Annotated[Any, AfterValidator(_scalar)]] | None = None
    low: StrictFloat | None = None
    high: StrictFloat | None = None
    type: Literal["float", "int"] = "float"
    log: StrictBool = False
    step: StrictFloat | None = Field(default=None, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _fixed(cls, data: Any) -> Any:
        return data if isinstance(data, dict) else {"value": data}

    @field_validator("choices")
    @classmethod
    def _distinct(cls, choices: list[Any]) -> list[Any]:
        if not choices:
            raise ValueError("empty choice list")
        for i, c in enumerate(choices):
            if c in choices[:i]:  # Optuna finds a choice by ==
                raise ValueError(f"choice {c!r} is listed twice")
        return choices

    @model_validator(mode="after")
    def _one_kind(self) -> ParamSpec:
        given = self.model_fields_set
        for alone in ("value", "choices"):
            if alone in given and given != {alone}:
                raise ValueError(f"'{min(given - {alone})}' does not go with {alone}")
        if not given & {"value", "choices", "low", "high"}:
            raise ValueError("no range: give choices, low and high, or a fixed value")
        self.distribution()
        return self

    def distribution(self) -> BaseDistribution | None:
        """The Optuna distribution (None for a fixed value); Optuna rejects a bad range."""
        if "value" in self.model_fields_set:
            return None
        if self.choices is not None:
            return CategoricalDistribution(self.choices)
        if self.low is None or self.high is None:
            raise ValueError("a range needs both low and high")
        dist: FloatDistribution | IntDistribution
        with warnings.catch_warnings():  # Optuna warns when it shortens a range to the step
            warnings.simplefilter("ignore")
            if self.type == "float":
                dist = FloatDistribution(self.low, self.high, log=self.log, step=self.step)
            elif not all(v is None or v.is_integer() for v in (self.low, self.high, self.step)):
                raise ValueError("type int takes integer low, high and step")
            else:
                dist = IntDistribution(
                    int(self.low), int(self.high), log=self.log, step=int(self.step or 1)
                )
        if dist.high != self.high:
            raise ValueError(f"step {self.step:g} does not divide [{self.low:g}, {self.high:g}]")
        return dist


#: A family's block: the parameters that exist only under that family.
Block = Annotated[dict[str, ParamSpec], BeforeValidator(_none_as_empty)]


class FamilySpec(_Schema):
    """``loss.family``: a family name (or ``{value: name}``), ``{choices: [names]}``, or
    ``{choices: {name: block}}``; a list of choices is read as families with empty blocks."""

    value: str | None = None
    choices: dict[str, Block] | None = None

    @model_validator(mode="before")
    @classmethod
    def _forms(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"value": data}
        if isinstance(data, dict) and isinstance(data.get("choices"), list):
            names = data["choices"]
            for i, name in enumerate(names):
                if name in names[:i]:
                    raise ValueError(f"'{name}' is listed twice")
            return {**data, "choices": dict.fromkeys(names)}
        return data

    @model_validator(mode="after")
    def _known(self) -> FamilySpec:
        if (self.value is None) == (self.choices is None):
            raise ValueError("give a family name or choices")
        if self.choices == {}:
            raise ValueError("empty choice list")
        for name in self.blocks():
            if name not in LOSS_FAMILIES:
                raise ValueError(
                    f"unknown loss family '{name}' (known: {', '.join(LOSS_FAMILIES)})"
                )
        return self

    def blocks(self) -> dict[str, dict[str, ParamSpec]]:
        """Each family's block, in the file's order (a fixed family: its one empty block)."""
        return {self.value: {}} if self.value is not None else dict(self.choices or {})


class SpaceSection(BaseModel):
    """``space`` (and each point of ``grid``): ``loss.family`` and dotted keys -> specs."""

    model_config = ConfigDict(extra="allow")
    family: FamilySpec | None = Field(default=None, alias="loss.family")
    __pydantic_extra__: dict[str, ParamSpec] = Field(init=False)

    @property
    def params(self) -> dict[str, ParamSpec]:
        """The specs other than ``loss.family``, in the file's order."""
        return dict(self.__pydantic_extra__)


#: A ``first_points`` entry: a flat point (dotted keys -> values) naming its ``loss.family``.
FirstPoint = with_config(ConfigDict(extra="allow"))(
    TypedDict("FirstPoint", {"loss.family": Annotated[str, Field(min_length=1)]})
)


class SearchSettings(_Schema):
    """``search``: how to search. ``sampler`` None means grid with a ``grid:``, else tpe."""

    model_config = ConfigDict(extra="forbid", strict=True)
    sampler: Literal["tpe", "random", "grid"] | None = None
    seed: int = 0
    num_samples: PositiveInt = 20
    metric: str = Field(default="exact_match", min_length=1)
    # None: lossearch.experiment.default_mode of the metric (min for loss*, else max)
    mode: Literal["max", "min"] | None = None
    scheduler: Literal["asha", "fifo"] = "asha"
    grace_period: PositiveInt = 1
    reduction_factor: float = Field(default=2, gt=1)
    max_concurrent: PositiveInt | None = None
    num_seeds: PositiveInt = 1
    n_startup_trials: NonNegativeInt = 10
    first_points: list[FirstPoint] = []
    per_family: PositiveInt | None = None

    @field_validator("seed", mode="before")
    @classmethod
    def _no_seed(cls, seed: Any) -> Any:
        return 0 if seed is None else seed


class SpaceFile(_Schema):
    """The whole file: ``base`` (a training config tree), ``search``, ``space``, ``grid``."""

    base: Annotated[dict[str, Any], BeforeValidator(_none_as_empty)] = {}
    search: Annotated[SearchSettings, BeforeValidator(_none_as_empty)] = SearchSettings()
    space: SpaceSection | None = None
    grid: list[SpaceSection] | None = Field(default=None, min_length=1)

    def settings(self) -> dict[str, Any]:
        """``search`` as a plain dict, its sampler filled in."""
        settings = self.search.model_dump()
        settings["sampler"] = settings["sampler"] or ("grid" if self.grid else "tpe")
        return settings


def parse_space_file(raw: dict[str, Any]) -> SpaceFile:
    """Validate a loaded search-space file; a one-line ``LossearchError`` names the key."""
    return validate_as(SpaceFile, raw)
