"""The ``space`` section compiled: each loss family's conditional parameters.

:func:`compile_space` turns a validated ``space`` (:class:`~lossearch.search.space_schema.
SpaceSection`) into the ``loss.family`` :class:`Param` and one :class:`Family` per family
(its CE mixing weight, its block, then the top-level parameters), checking where each dotted
key may go; :func:`enumerate_grid` and :func:`explicit_grid` give a grid's flat points. The
rules are those of :mod:`lossearch.search.space`'s module docstring; errors name the key's
YAML path (``space > loss.focl.gamma: unknown loss family 'focl'``).
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    check_distribution_compatibility,
)

from lossearch.errors import LossearchError
from lossearch.search.space_schema import FamilySpec, ParamSpec, SpaceSection
from lossearch.search.trial_config import (
    CE_WEIGHT_KEY,
    FAMILY_KEY,
    GRID_KEY,
    LOSS_FAMILIES,
    SEEDS_KEY,
    flat_point,
)

MAX_GRID_POINTS = 100_000


def is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclass(frozen=True)
class Param:
    """One compiled parameter: a dotted training-config key and how a trial gets its value.

    ``dist`` is the Optuna distribution it is sampled from, or None for the fixed ``value``.
    ``path`` is where it was written in the YAML, for error messages.
    """

    key: str
    path: str
    dist: BaseDistribution | None = None
    value: Any = None

    @property
    def sampled(self) -> bool:
        return self.dist is not None

    def suggest(self, trial: Any) -> Any:
        """The value for this trial: one ``trial.suggest_*`` call, or the fixed value."""
        d = self.dist
        if isinstance(d, FloatDistribution):
            return trial.suggest_float(self.key, d.low, d.high, step=d.step, log=d.log)
        if isinstance(d, IntDistribution):
            return trial.suggest_int(self.key, d.low, d.high, step=d.step, log=d.log)
        if isinstance(d, CategoricalDistribution):
            return trial.suggest_categorical(self.key, list(d.choices))
        return copy.deepcopy(self.value)

    def grid_values(self) -> list[Any]:
        """The values a grid crosses: each choice, or the fixed value."""
        if isinstance(self.dist, CategoricalDistribution):
            return list(self.dist.choices)
        if self.dist is None:
            return [self.value]
        raise LossearchError(
            f"{self.path}: a grid takes only fixed values and choices, not a range"
        )

    def probes(self) -> list[Any]:
        """Values checked against the training config at load time (a range: its ends and
        an interior point)."""
        d = self.dist
        if isinstance(d, IntDistribution):
            return sorted({d.low, d.high})
        if not isinstance(d, FloatDistribution):
            return self.grid_values()
        if d.log:
            inner = math.exp(math.log(d.low) + 0.37 * (math.log(d.high) - math.log(d.low)))
        else:
            inner = d.low + 0.37 * (d.high - d.low)
        return [d.low, d.high, inner]


@dataclass(frozen=True)
class Family:
    """One loss family's conditional space: its CE mixing weight and its parameters."""

    name: str
    path: str
    mix: Param | None
    params: tuple[Param, ...]

    @property
    def every(self) -> list[Param]:
        """The mixing weight (if any) and the parameters."""
        return [p for p in (self.mix, *self.params) if p is not None]

    def fixing(self, fixed: Mapping[str, Any]) -> Family:
        """This family with each key of ``fixed`` it has turned into a fixed value."""

        def fix(p: Param | None) -> Param | None:
            if p is None or p.key not in fixed:
                return p
            return Param(p.key, f"override '{p.key}'", value=fixed[p.key])

        mix = fix(self.mix)
        if mix is not None and mix is not self.mix:
            check_mix(mix)
        return Family(self.name, self.path, mix, tuple(map(fix, self.params)))  # type: ignore[arg-type]


def _param(key: str, spec: ParamSpec, path: str) -> Param:
    return Param(key, path, spec.distribution(), copy.deepcopy(spec.value))


def _check_key(key: str, path: str, family: str | None) -> tuple[str, ...]:
    """Check where a dotted key may go; returns its parts. ``family``: the enclosing block."""
    if not key or any(not p for p in key.split(".")):
        raise LossearchError(f"{path}: not a dotted config key")
    if key in (GRID_KEY, SEEDS_KEY):
        raise LossearchError(f"{path}: '{key}' is reserved (set by the search, not the space)")
    if key == FAMILY_KEY:
        raise LossearchError(f"{path}: loss.family goes at the top level of space only")
    if key == "seed":  # trials train under the base seed and the next ones (--seeds)
        raise LossearchError(
            f"{path}: the seed is not searched: trials train under base seed .. seed+S-1 "
            "(--seeds S, search.num_seeds)"
        )
    parts = tuple(key.split("."))
    if parts[0] != "loss":
        return parts
    if len(parts) == 1:
        raise LossearchError(f"{path}: set the loss through loss.family and loss.<family>.<param>")
    if len(parts) == 2:
        if parts[1] in LOSS_FAMILIES:
            raise LossearchError(
                f"{path}: choose loss components through loss.family, set their parameters as "
                f"loss.{parts[1]}.<param>"
            )
        return parts  # a loss setting such as loss.ce_scope
    comp = parts[1]
    if comp not in LOSS_FAMILIES:
        raise LossearchError(
            f"{path}: unknown loss family '{comp}' (known: {', '.join(LOSS_FAMILIES)})"
        )
    if comp != "ce" and parts[2:] == ("weight",):
        raise LossearchError(
            f"{path}: loss.{comp}.weight is derived as 1 - loss.ce.weight; "
            "set loss.ce.weight instead"
        )
    if family == "ce" and key == CE_WEIGHT_KEY:
        raise LossearchError(
            f"{path}: CE alone has weight 1; loss.ce.weight applies to the other families"
        )
    if family is not None and comp not in ("ce", family):
        raise LossearchError(f"{path}: a parameter of '{comp}' inside the block of '{family}'")
    return parts


def check_mix(mix: Param) -> None:
    """The CE mixing weight: a float range in [0, 1], or fixed or listed numbers in [0, 1)."""
    if isinstance(mix.dist, IntDistribution):
        raise LossearchError(f"{mix.path}: the CE mixing weight is a float, not type int")
    if isinstance(mix.dist, FloatDistribution):
        if mix.dist.low < 0 or mix.dist.high > 1:
            raise LossearchError(f"{mix.path}: the CE mixing weight range must lie in [0, 1]")
    elif not all(is_number(v) and 0 <= v < 1 for v in mix.grid_values()):
        raise LossearchError(
            f"{mix.path}: the CE mixing weight must be a number in [0, 1) (the family gets 1 - it)"
        )


def mix_rep(mix: Param) -> float:
    """A representative mixing weight, positive where possible (so CE is in the loss)."""
    if isinstance(mix.dist, FloatDistribution):
        return (mix.dist.low + mix.dist.high) / 2
    return float(max(mix.grid_values()))


def applies(p: Param, family: str, mix: float | None) -> bool:
    """``loss.ce.<param>`` (but the mixing weight) exists only while CE is in the loss."""
    return not p.key.startswith("loss.ce.") or p.key == CE_WEIGHT_KEY or family == "ce" or bool(mix)


# --------------------------------------------------------------------------- compiling


def compile_space(
    family_spec: FamilySpec, specs: Mapping[str, ParamSpec], where: Callable[[str], str]
) -> tuple[Param, tuple[Family, ...]]:
    """Compile a space: the ``loss.family`` parameter and each family's conditional space.

    ``where(key)`` is the YAML path of a top-level key, for error messages.
    """
    fam_path = where(FAMILY_KEY)
    blocks = family_spec.blocks()
    fixed = family_spec.value is not None
    top: dict[str, Param] = {}
    hoisted: dict[str, dict[str, Param]] = {n: {} for n in blocks}
    for key, spec in specs.items():
        parts = _check_key(key, where(key), None)
        if parts[0] == "loss" and len(parts) >= 3 and parts[1] != "ce":
            if parts[1] not in blocks:
                raise LossearchError(
                    f"{where(key)}: '{parts[1]}' is not one of the loss.family choices"
                )
            hoisted[parts[1]][key] = _param(key, spec, where(key))
        else:
            top[key] = _param(key, spec, where(key))

    families = []
    for name, block in blocks.items():
        bpath = fam_path if fixed else f"{fam_path} > choices > {name}"
        own = dict(hoisted[name])
        for key, spec in block.items():
            path = f"{bpath} > {key}"
            _check_key(key, path, name)
            if key in own:
                raise LossearchError(f"{path}: also given at the top level ({own[key].path})")
            own[key] = _param(key, spec, path)
        merged = {**own, **{k: p for k, p in top.items() if k not in own}}
        mix = merged.pop(CE_WEIGHT_KEY, None)
        if name == "ce":
            mix = None
        elif mix is not None:
            check_mix(mix)
        families.append(Family(name, bpath, mix, tuple(merged.values())))

    _check_compatible(families)
    if fixed:
        return Param(FAMILY_KEY, fam_path, value=family_spec.value), tuple(families)
    return Param(FAMILY_KEY, fam_path, CategoricalDistribution(tuple(blocks))), tuple(families)


def _check_compatible(families: list[Family]) -> None:
    """A key sampled under several families must have one Optuna distribution kind."""
    seen: dict[str, Param] = {}
    for p in (p for fam in families for p in fam.every if p.sampled):
        first = seen.setdefault(p.key, p)
        try:
            check_distribution_compatibility(first.dist, p.dist)  # type: ignore[arg-type]
        except ValueError as err:
            raise LossearchError(f"{p.path}: conflicts with {first.path} ({err})") from None


def enumerate_grid(families: tuple[Family, ...]) -> list[dict[str, Any]]:
    """All points of a space whose parameters are fixed or categorical, families in order."""
    points: list[dict[str, Any]] = []
    for fam in families:
        mixes: list[Any] = fam.mix.grid_values() if fam.mix is not None else [None]
        for w in mixes:
            params = [p for p in fam.params if applies(p, fam.name, w)]
            keys = [p.key for p in params]
            for combo in itertools.product(*(p.grid_values() for p in params)):
                points.append(flat_point(fam.name, w, dict(zip(keys, combo, strict=True))))
                if len(points) > MAX_GRID_POINTS:
                    raise LossearchError(f"grid: more than {MAX_GRID_POINTS} points")
    return points


def explicit_grid(grid: list[SpaceSection], shared: SpaceSection | None) -> list[dict[str, Any]]:
    """Compile a ``grid:`` list, each point merged over the fixed values of ``space``."""
    shared = shared or SpaceSection()
    points: list[dict[str, Any]] = []
    for i, point in enumerate(grid):
        own = {*point.params, *([FAMILY_KEY] if point.family else [])}

        def where(key: str, own: set[str] = own, i: int = i) -> str:
            return f"{f'grid[{i}]' if key in own else 'space'} > {key}"

        family_spec = point.family or shared.family
        if family_spec is None:
            raise LossearchError(f"grid[{i}]: 'loss.family' is required")
        family, families = compile_space(family_spec, {**shared.params, **point.params}, where)
        for p in (family, *families[0].every):
            if p.sampled:
                raise LossearchError(f"{p.path}: an explicit grid takes fixed values only")
        (flat,) = enumerate_grid(families)
        if flat in points:
            raise LossearchError(f"grid[{i}]: the same point as grid[{points.index(flat)}]")
        points.append(flat)
    return points
