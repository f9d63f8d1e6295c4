"""Search spaces: a declarative YAML compiled into an Optuna define-by-run function.

A search-space file has up to four top-level keys::

    base:    {...}   # a training config tree (the TrainConfig schema); trials override it
    search:  {...}   # sampler, seed, num_samples, metric, mode, scheduler defaults
    space:   {...}   # dotted training-config keys -> parameter specs (conditional on the family)
    grid:    [...]   # optional: an explicit table of points (implies ``sampler: grid``)

:func:`load_space` validates the file and returns a :class:`SearchSpace`; its bound method
:meth:`SearchSpace.define_by_run` is the ``space`` argument of Ray Tune's ``OptunaSearch``
and :meth:`SearchSpace.make_sampler` its ``sampler``::

    sp = load_space("search_spaces/quick.yaml")
    searcher = OptunaSearch(space=sp.define_by_run, metric=sp.settings["metric"],
                            mode=sp.settings["mode"], sampler=sp.make_sampler())

Parameter specs (the value under a dotted key) and the call each becomes, per trial:

- ``{low: a, high: b}`` -> ``trial.suggest_float(key, a, b)``; with ``log: true`` ->
  ``suggest_float(key, a, b, log=True)``; with ``step: s`` -> ``suggest_float(key, a, b,
  step=s)``.
- ``{low: a, high: b, type: int}`` -> ``trial.suggest_int(key, a, b, step=1)``; ``step: s`` ->
  ``step=s``; ``log: true`` -> ``log=True`` (step 1 only).
- ``{choices: [c1, c2, ...]}`` -> ``trial.suggest_categorical(key, [c1, c2, ...])`` (scalars).
- any scalar or list (``24``, ``[q_proj, v_proj]``), or ``{value: <anything>}`` -> no call: a
  fixed value, put into the trial config as it is.

``type`` defaults to ``float``: an integer field needs ``type: int`` (a float range on an
integer field is caught at load time). The Optuna parameter name is the dotted key itself.

The loss family and conditional parameters
    ``loss.family`` is required. It is a fixed name (``loss.family: focal``), or
    ``{choices: [ce, focal, ...]}``, or ``{choices: {ce: {}, focal: {<block>}, ...}}`` whose
    blocks hold parameters that exist only under that family. A trial first calls
    ``trial.suggest_categorical("loss.family", [...names])`` (no call when fixed), then:

    1. the CE mixing weight ``loss.ce.weight``, only when the family is not ``ce``: the loss is
       ``{ce: {weight: w}, X: {weight: 1 - w}}``; ``w = 0`` drops CE (X alone). Without a
       ``loss.ce.weight`` spec, a family X ≠ ce is used alone (``{X: {weight: 1}}``). A
       top-level ``loss.ce.weight`` applies to every family ≠ ce; one inside a family block
       replaces it for that family. Fixed or listed weights must lie in [0, 1), ranges in
       [0, 1].
    2. the family's block, in YAML order;
    3. the top-level parameters (those the family's block does not redefine), in YAML order.

    A top-level ``loss.X.<param>`` (X a family) is conditional on X: it is moved into X's block.
    ``loss.ce.<param>`` (other than ``weight``) is sampled whenever CE is in the loss. The
    component weights ``loss.X.weight`` (X ≠ ce) are derived, never specified.

The trial's flat config
    :meth:`SearchSpace.define_by_run` returns the complete flat config: ``loss.family``, for
    X ≠ ce ``loss.X.weight`` (``1 - w``, or ``1.0`` alone) and ``loss.ce.weight`` when a mixing
    weight is specified, the parameters that apply to that family (sampled or fixed) and
    ``seeds`` when set with :meth:`SearchSpace.with_seeds`. Ray Tune merges it over the values
    it captured from the ``suggest_*`` calls (they agree), so a parameter appears in a trial's
    config exactly where it applies. :func:`trial_to_config` turns it back into a
    :class:`~lossearch.config.TrainConfig`.

Samplers (``search.sampler``), see :meth:`SearchSpace.make_sampler`
    ``tpe`` (default): ``TPESampler(multivariate=True, group=True, constant_liar=True,
    n_startup_trials=search.n_startup_trials, seed=seed)``: ``group`` decomposes the
    conditional space into the sets of parameters that occur together, and the constant liar
    keeps concurrent trials apart. ``random``: ``RandomSampler(seed=seed)``. ``grid``: a table
    of points, each run once; see below. ``seed`` makes the sequence of sampled configurations
    reproducible for a given order of completed results.

Fair budgets (``search.per_family: N``, or :meth:`SearchSpace.with_per_family`)
    Exactly N trials of every family (``num_samples`` = N x families; a different explicit
    ``num_samples`` is an error). :class:`PerFamilySampler` assigns each trial's family: an
    enqueued ``first_points`` family, else the first family, in the choices' order, with the
    fewest trials in the study so far. The other parameters are sampled by the family's own
    tpe/random sampler on a view of the study holding only that family's trials, so TPE
    learns each family from its own results. The counts live in the study, which Ray Tune
    checkpoints with its trials: a resumed search still ends at N per family.

Grids
    With ``sampler: grid`` every parameter must be fixed or categorical; the points are the
    families in order, each crossed with its mixing weights and categorical parameters (a
    family's ``loss.ce.*`` parameters only where the weight is > 0). Alternatively ``grid:`` is
    an explicit list of flat points (dotted keys -> fixed values, each naming its
    ``loss.family``); ``space`` then holds only fixed values shared by every point (a point's
    own value wins). A trial calls ``trial.suggest_categorical("grid_point", [0, ..., n-1])``
    under a grid sampler over that one parameter, so the first n trials are the n points, each
    exactly once, in an order shuffled by ``seed``; ``grid_point`` stays in the trial config.
    ``num_samples`` defaults to n; a smaller value runs a subset, a larger one is an error
    (repeat with more seeds instead).

Validation
    :func:`load_space` raises :class:`~lossearch.errors.LossearchError` naming the offending
    key path (``space > loss.family > choices > focl: unknown loss family``) for malformed
    YAML, unknown top-level or ``search`` keys, unknown loss families (checked against
    :data:`LOSS_FAMILIES`), a spec with no range, an empty or duplicated choice list,
    ``low > high``, ``log`` with ``low <= 0``, a step that does not divide the range, and
    dotted keys the training config rejects: every value a parameter can take at its ends
    (``low``, ``high``, an interior point, each choice, the fixed value) is applied to ``base``
    with :func:`~lossearch.config.apply_overrides` under every family it applies to and
    validated with :func:`~lossearch.config.validate` (the loss section through
    ``lossearch.losses.normalize_spec``).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    check_distribution_compatibility,
)
from optuna.samplers import BaseSampler, GridSampler

from lossearch.config import (
    TrainConfig,
    apply_overrides,
    parse_override,
    read_yaml,
    set_path,
    validate,
)
from lossearch.errors import LossearchError
from lossearch.losses.registry import LOSSES

#: The loss registry's names; ``loss.family`` takes one of them.
#: The registered loss families, in registry order (``lossearch.losses.LOSSES``).
LOSS_FAMILIES: tuple[str, ...] = tuple(LOSSES)

SAMPLERS: tuple[str, ...] = ("tpe", "random", "grid")
SCHEDULERS: tuple[str, ...] = ("asha", "fifo")
FAMILY_KEY = "loss.family"
CE_WEIGHT_KEY = "loss.ce.weight"
GRID_KEY = "grid_point"
SEEDS_KEY = "seeds"
#: Flat-config keys that are not training-config overrides.
RESERVED_KEYS: frozenset[str] = frozenset({FAMILY_KEY, GRID_KEY, SEEDS_KEY})

TOP_LEVEL_KEYS: tuple[str, ...] = ("base", "search", "space", "grid")
SPEC_FIELDS: frozenset[str] = frozenset({"choices", "low", "high", "log", "step", "type", "value"})
#: ``search`` keys and their defaults (``sampler`` and ``num_samples`` are filled at load).
SEARCH_DEFAULTS: dict[str, Any] = {
    "sampler": "tpe",
    "seed": 0,
    "num_samples": 20,
    "metric": "exact_match",
    "mode": "max",
    "scheduler": "asha",
    "grace_period": 1,
    "reduction_factor": 2,
    "max_concurrent": None,
    "num_seeds": 1,
    "n_startup_trials": 10,
    "first_points": [],
    "per_family": None,
}
MAX_GRID_POINTS = 100_000


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class Param:
    """One compiled parameter: a dotted training-config key and how a trial gets its value.

    ``kind`` is ``"float"`` (``suggest_float``), ``"int"`` (``suggest_int``),
    ``"categorical"`` (``suggest_categorical``) or ``"fixed"`` (no call; ``value``).
    ``path`` is where it was written in the YAML, for error messages.
    """

    key: str
    path: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()
    value: Any = None

    @property
    def sampled(self) -> bool:
        return self.kind != "fixed"

    def suggest(self, trial: Any) -> Any:
        """The value for this trial: one ``trial.suggest_*`` call, or the fixed value."""
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(
                self.key, self.low, self.high, step=self.step or 1, log=self.log
            )
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        return copy.deepcopy(self.value)

    def distribution(self) -> BaseDistribution | None:
        """The Optuna distribution (None when fixed)."""
        if self.kind == "float":
            return FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return IntDistribution(self.low, self.high, log=self.log, step=self.step or 1)
        if self.kind == "categorical":
            return CategoricalDistribution(self.choices)
        return None

    def grid_values(self) -> list[Any]:
        """The values a grid crosses: each choice, or the fixed value."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "fixed":
            return [self.value]
        raise LossearchError(
            f"{self.path}: a grid takes only fixed values and choices, not a range"
        )

    def probes(self) -> list[Any]:
        """Values checked against the training config at load time."""
        if self.kind == "fixed":
            return [self.value]
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int":
            return sorted({self.low, self.high})
        lo, hi = float(self.low), float(self.high)
        if self.log:
            inner = math.exp(math.log(lo) + 0.37 * (math.log(hi) - math.log(lo)))
        else:
            inner = lo + 0.37 * (hi - lo)
        return [lo, hi, inner]


@dataclass(frozen=True)
class Family:
    """One loss family's conditional space: its CE mixing weight and its parameters."""

    name: str
    path: str
    mix: Param | None
    params: tuple[Param, ...]


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_choice(x: Any) -> bool:
    return x is None or isinstance(x, (bool, int, float, str))


def _parse_param(key: str, spec: Any, path: str) -> Param:
    """Compile one YAML spec (see the module docstring) into a :class:`Param`."""
    if not isinstance(spec, Mapping):
        return Param(key, path, "fixed", value=copy.deepcopy(spec))
    unknown = sorted(str(k) for k in set(spec) - SPEC_FIELDS)
    if unknown:
        raise LossearchError(
            f"{path}: unknown field '{unknown[0]}' (a spec has choices, low/high [log, step, "
            "type] or value; write a fixed mapping as {value: ...})"
        )
    if "value" in spec:
        if len(spec) > 1:
            raise LossearchError(f"{path}: 'value' (a fixed value) takes no other fields")
        return Param(key, path, "fixed", value=copy.deepcopy(spec["value"]))
    if "choices" in spec:
        extra = sorted(set(spec) - {"choices"})
        if extra:
            raise LossearchError(f"{path}: '{extra[0]}' does not go with choices")
        choices = spec["choices"]
        if not isinstance(choices, list):
            raise LossearchError(f"{path}: choices must be a list")
        if not choices:
            raise LossearchError(f"{path}: empty choice list")
        for c in choices:
            if not _is_choice(c):
                raise LossearchError(
                    f"{path}: choice {c!r} is not a scalar (null, bool, number or string)"
                )
        seen: list[Any] = []
        for c in choices:
            if any(c == s for s in seen):  # Optuna finds a choice by ==
                raise LossearchError(f"{path}: choice {c!r} is listed twice")
            seen.append(c)
        return Param(key, path, "categorical", choices=tuple(choices))
    if "low" not in spec and "high" not in spec:
        raise LossearchError(f"{path}: no range: give choices, low and high, or a fixed value")
    for end in ("low", "high"):
        if end not in spec:
            raise LossearchError(f"{path}: a range needs both low and high ('{end}' is missing)")
        if not _is_number(spec[end]):
            raise LossearchError(f"{path}: {end} must be a number, got {spec[end]!r}")
    kind = spec.get("type", "float")
    if kind not in ("float", "int"):
        raise LossearchError(f"{path}: type must be float or int, got {kind!r}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise LossearchError(f"{path}: log must be true or false")
    step = spec.get("step")
    low, high = spec["low"], spec["high"]
    if step is not None and (not _is_number(step) or step <= 0):
        raise LossearchError(f"{path}: step must be a positive number, got {step!r}")
    if kind == "int":
        for name, v in (("low", low), ("high", high), ("step", step)):
            if v is not None and float(v) != int(v):
                raise LossearchError(f"{path}: {name} must be an integer for type int, got {v}")
        low, high = int(low), int(high)
        step = int(step) if step is not None else None
    else:
        low, high = float(low), float(high)
        step = float(step) if step is not None else None
    if low > high:
        raise LossearchError(f"{path}: low ({low}) > high ({high})")
    if log and low <= 0:
        raise LossearchError(f"{path}: log needs low > 0, got low = {low}")
    if log and step is not None and not (kind == "int" and step == 1):
        raise LossearchError(f"{path}: log and step do not go together")
    if step is not None:
        n = (high - low) / step
        if abs(n - round(n)) > 1e-9 * max(1.0, abs(n)):
            raise LossearchError(f"{path}: step {step} does not divide the range [{low}, {high}]")
    return Param(key, path, kind, low=low, high=high, step=step, log=log)


# --------------------------------------------------------------------------- keys


def _check_key(key: Any, path: str, family: str | None) -> tuple[str, ...]:
    """Check a dotted key's form; returns its parts. ``family``: the enclosing block or None."""
    if not isinstance(key, str) or not key or any(not p for p in key.split(".")):
        raise LossearchError(f"{path}: not a dotted config key")
    if key in (GRID_KEY, SEEDS_KEY):
        raise LossearchError(f"{path}: '{key}' is reserved (set by the search, not the space)")
    if key == FAMILY_KEY:
        raise LossearchError(f"{path}: loss.family goes at the top level of space only")
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
    if comp != "ce" and parts[2] == "weight" and len(parts) == 3:
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


def _check_mix(mix: Param) -> None:
    bad = f"{mix.path}: the CE mixing weight must be a number in [0, 1) (the family gets 1 - it)"
    if mix.kind == "int":
        raise LossearchError(f"{mix.path}: the CE mixing weight is a float, not type int")
    if mix.kind == "float":
        if mix.low < 0 or mix.high > 1:
            raise LossearchError(f"{mix.path}: the CE mixing weight range must lie in [0, 1]")
        return
    values = mix.grid_values()
    if not all(_is_number(v) and 0 <= v < 1 for v in values):
        raise LossearchError(bad)


def _mix_rep(mix: Param) -> float:
    """A representative mixing weight, positive where possible (so CE is in the loss)."""
    if mix.kind == "float":
        return (float(mix.low) + float(mix.high)) / 2
    return float(max(mix.grid_values()))


# --------------------------------------------------------------------------- compiling


def _family_blocks(spec: Any, path: str) -> tuple[dict[str, dict[str, Any]], bool]:
    """``loss.family``'s spec -> ({name: block}, fixed?)."""
    if isinstance(spec, str):
        names, blocks, fixed = [spec], {spec: {}}, True
    elif isinstance(spec, Mapping) and set(spec) == {"value"} and isinstance(spec["value"], str):
        names, blocks, fixed = [spec["value"]], {spec["value"]: {}}, True
    elif isinstance(spec, Mapping) and "choices" in spec:
        extra = sorted(set(spec) - {"choices"})
        if extra:
            raise LossearchError(f"{path}: '{extra[0]}' does not go with choices")
        choices = spec["choices"]
        fixed = False
        if isinstance(choices, list):
            names = choices
            blocks = {}
            for n in names:
                if not isinstance(n, str):
                    raise LossearchError(f"{path} > choices: {n!r} is not a family name")
                if n in blocks:
                    raise LossearchError(f"{path} > choices: '{n}' is listed twice")
                blocks[n] = {}
        elif isinstance(choices, Mapping):
            names = list(choices)
            blocks = {}
            for n in names:
                block = choices[n]
                if block is None:
                    block = {}
                if not isinstance(block, Mapping):
                    raise LossearchError(
                        f"{path} > choices > {n}: expected a mapping of the family's parameters"
                    )
                blocks[n] = dict(block)
        else:
            raise LossearchError(f"{path}: choices must be a list or a mapping of families")
        if not names:
            raise LossearchError(f"{path}: empty choice list")
    elif isinstance(spec, Mapping) and not (set(spec) & {"choices", "value"}):
        raise LossearchError(f"{path}: no range: give a family name or choices")
    else:
        raise LossearchError(
            f"{path}: expected a family name, {{choices: [...]}} or {{choices: {{name: {{...}}}}}}"
        )
    for n in names:
        if n not in LOSS_FAMILIES:
            where = path if fixed else f"{path} > choices > {n}"
            raise LossearchError(
                f"{where}: unknown loss family '{n}' (known: {', '.join(LOSS_FAMILIES)})"
            )
    return blocks, fixed


def _compile(
    mapping: Any, where: Mapping[str, str], default_prefix: str
) -> tuple[Param, tuple[Family, ...]]:
    """Compile a ``space`` mapping; ``where[key]`` is the YAML path prefix of each key."""
    if not isinstance(mapping, Mapping):
        raise LossearchError(f"{default_prefix}: expected a mapping of dotted config keys")

    def path_of(key: Any) -> str:
        return f"{where.get(key, default_prefix)} > {key}"

    if FAMILY_KEY not in mapping:
        raise LossearchError(
            f"{default_prefix}: 'loss.family' is required (a family name or choices)"
        )
    fam_path = path_of(FAMILY_KEY)
    blocks, fixed = _family_blocks(mapping[FAMILY_KEY], fam_path)

    globals_: dict[str, Param] = {}
    hoisted: dict[str, dict[str, Param]] = {n: {} for n in blocks}
    for key, spec in mapping.items():
        if key == FAMILY_KEY:
            continue
        path = path_of(key)
        parts = _check_key(key, path, None)
        if parts[0] == "loss" and len(parts) >= 3 and parts[1] != "ce":
            if parts[1] not in blocks:
                raise LossearchError(f"{path}: '{parts[1]}' is not one of the loss.family choices")
            hoisted[parts[1]][key] = _parse_param(key, spec, path)
        else:
            globals_[key] = _parse_param(key, spec, path)

    families = []
    for name, block in blocks.items():
        bpath = fam_path if fixed else f"{fam_path} > choices > {name}"
        own: dict[str, Param] = dict(hoisted[name])
        for key, spec in block.items():
            path = f"{bpath} > {key}"
            _check_key(key, path, name)
            if key in own:
                raise LossearchError(f"{path}: also given at the top level ({own[key].path})")
            own[key] = _parse_param(key, spec, path)
        merged = dict(own)
        merged.update({k: p for k, p in globals_.items() if k not in own})
        mix = merged.pop(CE_WEIGHT_KEY, None)
        if name == "ce":
            mix = None
        elif mix is not None:
            _check_mix(mix)
        families.append(Family(name, bpath, mix, tuple(merged.values())))

    _check_compatible(families)
    if fixed:
        family = Param(FAMILY_KEY, fam_path, "fixed", value=next(iter(blocks)))
    else:
        family = Param(FAMILY_KEY, fam_path, "categorical", choices=tuple(blocks))
    return family, tuple(families)


def _check_compatible(families: list[Family]) -> None:
    """A key sampled under several families must have one Optuna distribution kind."""
    seen: dict[str, Param] = {}
    for fam in families:
        for p in (fam.mix, *fam.params):
            if p is None or not p.sampled:
                continue
            first = seen.setdefault(p.key, p)
            if first is p:
                continue
            try:
                check_distribution_compatibility(first.distribution(), p.distribution())
            except ValueError as err:
                raise LossearchError(f"{p.path}: conflicts with {first.path} ({err})") from None


def _flat_point(family: str, mix: float | None, values: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {FAMILY_KEY: family}
    if family != "ce":
        if mix is not None:
            out[CE_WEIGHT_KEY] = mix
        out[f"loss.{family}.weight"] = 1.0 if mix is None else _complement(mix)
    out.update(values)
    return out


def _complement(w: float) -> float:
    return round(1.0 - float(w), 12)


def _ce_in_loss(family: str, mix: float | None) -> bool:
    return family == "ce" or bool(mix)


def _applies(p: Param, family: str, mix: float | None) -> bool:
    """``loss.ce.<param>`` exists only while CE is in the loss."""
    return not p.key.startswith("loss.ce.") or _ce_in_loss(family, mix)


def _enumerate(families: tuple[Family, ...]) -> list[dict[str, Any]]:
    """All points of a space whose parameters are fixed or categorical, families in order."""
    points: list[dict[str, Any]] = []
    for fam in families:
        mixes: list[Any] = fam.mix.grid_values() if fam.mix is not None else [None]
        for w in mixes:
            params = [p for p in fam.params if _applies(p, fam.name, w)]
            axes = [p.grid_values() for p in params]
            for combo in itertools.product(*axes):
                points.append(
                    _flat_point(fam.name, w, {p.key: v for p, v in zip(params, combo, strict=True)})
                )
                if len(points) > MAX_GRID_POINTS:
                    raise LossearchError(f"grid: more than {MAX_GRID_POINTS} points")
    return points


# --------------------------------------------------------------------------- trial -> config


def family_of(flat: Mapping[str, Any]) -> str:
    """The loss family of a trial's flat config (its ``"loss.family"``)."""
    family = flat.get(FAMILY_KEY)
    if not isinstance(family, str) or not family:
        raise LossearchError("trial config has no 'loss.family'")
    return family


def _is_component(name: str, value: Any) -> bool:
    return name in LOSS_FAMILIES or isinstance(value, Mapping)


def _component_entry(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return copy.deepcopy(dict(value))
    if _is_number(value):
        return {"weight": value}
    return {}


def _loss_section(base_loss: Any, family: str, flat: Mapping[str, Any]) -> dict[str, Any]:
    """Build the trial's loss section: base settings + CE/family components + their params."""
    if family not in LOSS_FAMILIES:
        raise LossearchError(
            f"trial config: unknown loss family '{family}' (known: {', '.join(LOSS_FAMILIES)})"
        )
    base_loss = base_loss if isinstance(base_loss, Mapping) else {}
    loss = {k: copy.deepcopy(v) for k, v in base_loss.items() if not _is_component(k, v)}
    if family == "ce":
        weights = {"ce": flat.get(CE_WEIGHT_KEY, 1.0)}
    else:
        w = flat.get(CE_WEIGHT_KEY, 0.0) or 0.0
        weights = {"ce": w} if w else {}
        weights[family] = flat.get(f"loss.{family}.weight", _complement(w))
    for comp, weight in weights.items():
        entry = _component_entry(base_loss.get(comp))
        entry["weight"] = weight
        loss[comp] = entry
    for key, value in flat.items():
        parts = key.split(".")
        if parts[0] != "loss" or len(parts) < 3 or parts[1] not in LOSS_FAMILIES:
            continue
        comp = parts[1]
        if parts[2:] == ["weight"] and comp in ("ce", family):
            continue  # consumed above
        if comp not in loss:
            raise LossearchError(
                f"trial config key '{key}': '{comp}' is not in this trial's loss (family {family})"
            )
        set_path(loss[comp], parts[2:], copy.deepcopy(value))
    return loss


def _apply_flat(base_tree: Mapping[str, Any], flat: Mapping[str, Any]) -> dict[str, Any]:
    """The raw (unvalidated) training-config tree of a trial."""
    family = family_of(flat)
    tree = copy.deepcopy(dict(base_tree))
    tree["loss"] = _loss_section(tree.get("loss"), family, flat)
    rest = {}
    for key, value in flat.items():
        if key in RESERVED_KEYS:
            continue
        parts = key.split(".")
        if parts[0] == "loss" and len(parts) >= 3 and parts[1] in LOSS_FAMILIES:
            continue  # handled by _loss_section
        rest[key] = value
    return apply_overrides(tree, rest)


def trial_to_config(base_tree: Mapping[str, Any], flat: Mapping[str, Any]) -> TrainConfig:
    """Apply a trial's flat config to the base training config; returns a ``TrainConfig``.

    The loss section is rebuilt from ``"loss.family"``: ``ce`` alone (weight 1), or CE with
    weight ``"loss.ce.weight"`` (dropped when absent or 0) plus the family with weight
    ``"loss.<family>.weight"`` (default ``1 - w``). Base loss components that were not chosen
    are dropped; the chosen ones keep their base parameters under the trial's values; loss
    settings such as ``ce_scope`` are kept. Every other dotted key is applied with
    :func:`~lossearch.config.apply_overrides`; ``"seeds"`` and ``"grid_point"`` are ignored.
    Raises :class:`~lossearch.errors.LossearchError` (invalid value, a parameter of a
    component that is not in the loss).
    """
    return validate(_apply_flat(base_tree, flat))


# --------------------------------------------------------------------------- the space


class GridPointSampler(GridSampler):
    """Optuna's ``GridSampler`` without its ``study.stop()`` after the last point.

    ``GridSampler.after_trial`` stops the study once every point is done, and ``Study.stop``
    raises outside ``study.optimize`` -- in the ask-and-tell interface that Ray Tune's
    ``OptunaSearch`` uses, the last ``tell`` would raise. Scheduling is unchanged: trial
    number k < n gets point k of the grid shuffled by ``seed``; later trials re-run a point.
    """

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        return None


def _trial_family(trial: Any) -> str | None:
    """A trial's loss family: its ``loss.family`` parameter, or the enqueued (fixed) one."""
    family = trial.params.get(FAMILY_KEY)
    if family is None:
        family = (trial.system_attrs.get("fixed_params") or {}).get(FAMILY_KEY)
    return family


class _FamilyStudy:
    """A view of an Optuna study that holds only the trials of one loss family.

    Everything but the trial lists is the study's own (storage, directions, ids), as in
    Optuna's own ``_BracketStudy`` of the Hyperband pruner.
    """

    def __init__(self, study: Any, family: str) -> None:
        self._study = study
        self._family = family

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(
        self, deepcopy: bool = True, states: Any = None, use_cache: bool = False
    ) -> list[Any]:
        trials = self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
        return [t for t in trials if _trial_family(t) == self._family]

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[Any]:
        return self._get_trials(deepcopy=deepcopy, states=states)

    @property
    def trials(self) -> list[Any]:
        return self.get_trials()


class PerFamilySampler(BaseSampler):
    """Fair budgets: assigns each trial's loss family, and samples the rest per family.

    The family of a trial is not sampled. It is the trial's enqueued family (a
    ``first_points`` entry), else the first family, in the space's order, among those with
    the fewest trials in the study so far (any state: running, finished, pruned, failed). So
    ``n x F`` trials give every family exactly ``n`` when no family has more than ``n``
    first points, and a study restored after a crash goes on from its own counts.

    Every other parameter is sampled by the family's own sampler (TPE or random) on a view
    of the study that holds only that family's trials: TPE models each family's parameters
    and learning rate from that family's results alone (``n_startup_trials`` then counts
    per family), as if each family were its own study.
    """

    def __init__(self, families: Sequence[str], samplers: Sequence[BaseSampler]) -> None:
        if len(families) != len(samplers) or not families:
            raise ValueError("one sampler per family")
        self._families = tuple(families)
        self._samplers = dict(zip(self._families, samplers, strict=True))

    def family_for(self, study: Any, trial: Any) -> str:
        """The family of ``trial`` (see the class docstring)."""
        own = _trial_family(trial)
        if own is not None:
            return own
        counts = dict.fromkeys(self._families, 0)
        for t in study._get_trials(deepcopy=False):
            name = _trial_family(t)
            if t.number != trial.number and name in counts:
                counts[name] += 1
        return min(self._families, key=counts.__getitem__)  # the first of the least used

    def _sampler(self, name: str) -> BaseSampler:
        return self._samplers.get(name, self._samplers[self._families[0]])

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, BaseDistribution]:
        name = self.family_for(study, trial)
        space = self._sampler(name).infer_relative_search_space(_FamilyStudy(study, name), trial)
        space.pop(FAMILY_KEY, None)
        return space

    def sample_relative(
        self, study: Any, trial: Any, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        name = self.family_for(study, trial)
        return self._sampler(name).sample_relative(_FamilyStudy(study, name), trial, search_space)

    def sample_independent(
        self, study: Any, trial: Any, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        name = self.family_for(study, trial)
        if param_name == FAMILY_KEY:
            return name
        return self._sampler(name).sample_independent(
            _FamilyStudy(study, name), trial, param_name, param_distribution
        )

    def before_trial(self, study: Any, trial: Any) -> None:
        for sampler in self._samplers.values():
            sampler.before_trial(study, trial)

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        name = _trial_family(trial)
        self._sampler(name or self._families[0]).after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        for sampler in self._samplers.values():
            sampler.reseed_rng()


@dataclass(frozen=True, eq=False)
class SearchSpace:
    """A compiled search space. Plain data, so the bound :meth:`define_by_run` pickles.

    Attributes:
        raw: the YAML mapping as loaded (written to the experiment directory).
        base: the training config tree the trials override.
        settings: the ``search`` section with defaults filled (``sampler``, ``seed``,
            ``num_samples``, ``metric``, ``mode``, ``scheduler``, ``grace_period``,
            ``reduction_factor``, ``max_concurrent``, ``num_seeds``, ``n_startup_trials``).
        family: the ``loss.family`` parameter (categorical or fixed).
        families: each family's conditional space (empty for an explicit ``grid:``).
        grid: the grid's flat points (empty unless ``settings["sampler"] == "grid"``).
        seeds: training seeds put into every trial config as ``"seeds"`` (None: not put).
        fixed_by_override: ``(key, value)`` of each key the space set that a command-line
            override fixed instead (``load_space(..., overrides)``); its trials carry
            ``value``.
    """

    raw: dict[str, Any]
    base: dict[str, Any]
    settings: dict[str, Any]
    family: Param
    families: tuple[Family, ...]
    grid: tuple[dict[str, Any], ...] = ()
    seeds: tuple[int, ...] | None = None
    fixed_by_override: tuple[tuple[str, Any], ...] = ()

    @property
    def sampler(self) -> str:
        return self.settings["sampler"]

    @property
    def family_names(self) -> tuple[str, ...]:
        if self.grid:
            return tuple(dict.fromkeys(p[FAMILY_KEY] for p in self.grid))
        return tuple(f.name for f in self.families)

    def _family(self, name: str) -> Family:
        for fam in self.families:
            if fam.name == name:
                return fam
        raise LossearchError(f"loss family '{name}' is not in this space")

    def with_seeds(self, seeds: list[int] | tuple[int, ...]) -> SearchSpace:
        """A copy whose trial configs carry ``"seeds": list(seeds)``."""
        seeds = tuple(int(s) for s in seeds)
        if not seeds:
            raise LossearchError("seeds: at least one seed")
        return dataclasses.replace(self, seeds=seeds)

    def with_per_family(self, n: int) -> SearchSpace:
        """A copy that runs exactly ``n`` trials of every family (``num_samples`` = n x F).

        The family of each trial is then assigned, not sampled (see
        :class:`PerFamilySampler`). Raises ``LossearchError`` for ``n < 1``, a grid, or more
        ``first_points`` of one family than ``n``.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise LossearchError(f"per_family must be an integer >= 1, got {n!r}")
        if self.sampler == "grid":
            raise LossearchError(
                "per_family: not with a grid (a grid runs each point once; use more seeds "
                "to repeat)"
            )
        counts = dict.fromkeys(self.family_names, 0)
        for point in self.settings["first_points"]:
            counts[point[FAMILY_KEY]] += 1
        for name, count in counts.items():
            if count > n:
                raise LossearchError(
                    f"search > first_points: {count} points of family '{name}', more than "
                    f"per_family ({n})"
                )
        settings = {**self.settings, "per_family": n, "num_samples": n * len(counts)}
        return dataclasses.replace(self, settings=settings)

    def param_range(self, key: str) -> dict[str, list[Any] | None]:
        """Per family, the ``[low, high]`` that trials can give ``key`` (``None``: the space
        does not search it for that family; a fixed value or a single choice is not a range).

        A range gives its ends, a choice list its smallest and largest choice; an explicit
        grid the smallest and largest of its points' values.
        """
        out: dict[str, list[Any] | None] = {}
        for name in self.family_names:
            values: list[Any] = []
            if self.grid:
                values = [p[key] for p in self.grid if p[FAMILY_KEY] == name and key in p]
            else:
                fam = self._family(name)
                for p in (fam.mix, *fam.params):
                    if p is None or p.key != key:
                        continue
                    if p.kind in ("float", "int"):
                        values = [p.low, p.high]
                    elif p.kind == "categorical":
                        values = list(p.choices)
            numbers = [v for v in values if _is_number(v)]
            out[name] = [min(numbers), max(numbers)] if len(set(numbers)) > 1 else None
        return out

    def define_by_run(self, trial: Any) -> dict[str, Any]:
        """Ray Tune/Optuna define-by-run function: suggest this trial's values.

        Calls ``trial.suggest_categorical("loss.family", ...)`` (unless fixed), then the
        family's mixing weight, block and the top-level parameters (see the module
        docstring); under a grid, only ``trial.suggest_categorical("grid_point", ...)``.
        Returns the trial's complete flat config.
        """
        if self.grid:
            idx = trial.suggest_categorical(GRID_KEY, list(range(len(self.grid))))
            out = {GRID_KEY: idx, **copy.deepcopy(self.grid[idx])}
        else:
            name = self.family.suggest(trial)
            fam = self._family(name)
            w = fam.mix.suggest(trial) if fam.mix is not None else None
            values = {p.key: p.suggest(trial) for p in fam.params if _applies(p, name, w)}
            out = _flat_point(name, w, values)
        if self.seeds is not None:
            out[SEEDS_KEY] = list(self.seeds)
        return out

    def make_sampler(self, seed: int | None = None) -> BaseSampler:
        """The Optuna sampler of ``settings["sampler"]``; ``seed`` defaults to ``settings``.

        ``tpe``: ``TPESampler(multivariate=True, group=True, constant_liar=True,
        n_startup_trials=settings["n_startup_trials"], seed=seed)`` (Optuna's experimental
        warnings for these options are silenced). ``random``: ``RandomSampler(seed=seed)``.
        ``grid``: a :class:`GridPointSampler` over ``{"grid_point": [0, ..., n-1]}``. With
        ``settings["per_family"]``: a :class:`PerFamilySampler` holding one such tpe or random
        sampler per family, the i-th family's seeded ``seed + i``.
        """
        seed = self.settings["seed"] if seed is None else seed
        if self.settings.get("per_family") is not None:
            names = self.family_names
            return PerFamilySampler(
                names,
                [self._base_sampler(None if seed is None else seed + i) for i in range(len(names))],
            )
        return self._base_sampler(seed)

    def _base_sampler(self, seed: int | None) -> BaseSampler:
        kind = self.settings["sampler"]
        if kind == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if kind == "grid":
            return GridPointSampler({GRID_KEY: list(range(len(self.grid)))}, seed=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                multivariate=True,
                group=True,
                constant_liar=True,
                n_startup_trials=self.settings["n_startup_trials"],
                seed=seed,
            )

    def keys_for(self, family: str) -> set[str]:
        """The flat-config keys a trial of ``family`` can carry (``seeds`` excluded)."""
        if self.grid:
            return {k for p in self.grid if p[FAMILY_KEY] == family for k in p} | {GRID_KEY}
        fam = self._family(family)
        keys = {FAMILY_KEY, *(p.key for p in fam.params)}
        if family != "ce":
            keys.add(f"loss.{family}.weight")
            if fam.mix is not None:
                keys.add(CE_WEIGHT_KEY)
        return keys


# --------------------------------------------------------------------------- loading


def _probe_family(base: dict[str, Any], fam: Family) -> None:
    """Apply every probe value of ``fam``'s parameters to ``base`` and validate."""
    rep = _mix_rep(fam.mix) if fam.mix is not None else None

    def check(flat: dict[str, Any], p: Param | None) -> None:
        try:
            validate(_apply_flat(base, flat))
        except LossearchError as err:
            msg = f"{p.path if p else fam.path}: {err}"
            if p is not None and p.kind == "float" and "valid integer" in msg:
                msg += " (an integer field: add 'type: int' to the range)"
            raise LossearchError(msg) from None

    head: dict[str, Any] = {FAMILY_KEY: fam.name}
    if rep is not None:
        head[CE_WEIGHT_KEY] = rep
    check(head, None)
    if fam.mix is not None:
        for v in fam.mix.probes():
            check({**head, CE_WEIGHT_KEY: v}, fam.mix)
    for p in fam.params:
        if _applies(p, fam.name, rep):
            for v in p.probes():
                check({**head, p.key: v}, p)


def _parse_search(raw: Any, grid: bool) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise LossearchError("search: expected a mapping")
    unknown = sorted(set(raw) - set(SEARCH_DEFAULTS))
    if unknown:
        raise LossearchError(
            f"search > {unknown[0]}: unknown key (known: {', '.join(SEARCH_DEFAULTS)})"
        )
    s = {**SEARCH_DEFAULTS, **raw}
    if grid and "sampler" not in raw:
        s["sampler"] = "grid"

    def need(cond: bool, key: str, what: str) -> None:
        if not cond:
            raise LossearchError(f"search > {key}: {what}, got {s[key]!r}")

    def is_int(x: Any) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    need(s["sampler"] in SAMPLERS, "sampler", f"one of {', '.join(SAMPLERS)}")
    need(s["seed"] is None or is_int(s["seed"]), "seed", "an integer")
    if s["seed"] is None:
        s["seed"] = 0
    need(is_int(s["num_samples"]) and s["num_samples"] >= 1, "num_samples", "an integer >= 1")
    need(isinstance(s["metric"], str) and bool(s["metric"]), "metric", "a metric name")
    need(s["mode"] in ("max", "min"), "mode", "max or min")
    need(s["scheduler"] in SCHEDULERS, "scheduler", f"one of {', '.join(SCHEDULERS)}")
    need(is_int(s["grace_period"]) and s["grace_period"] >= 1, "grace_period", "an integer >= 1")
    need(
        _is_number(s["reduction_factor"]) and s["reduction_factor"] > 1,
        "reduction_factor",
        "a number > 1",
    )
    need(
        s["max_concurrent"] is None or (is_int(s["max_concurrent"]) and s["max_concurrent"] >= 1),
        "max_concurrent",
        "an integer >= 1",
    )
    need(is_int(s["num_seeds"]) and s["num_seeds"] >= 1, "num_seeds", "an integer >= 1")
    need(
        is_int(s["n_startup_trials"]) and s["n_startup_trials"] >= 0,
        "n_startup_trials",
        "an integer >= 0",
    )
    need(
        isinstance(s["first_points"], list)
        and all(isinstance(p, Mapping) and p.get("loss.family") for p in s["first_points"]),
        "first_points",
        "a list of mappings, each naming its loss.family",
    )
    need(
        s["per_family"] is None or (is_int(s["per_family"]) and s["per_family"] >= 1),
        "per_family",
        "an integer >= 1",
    )
    if s["per_family"] is not None and s["sampler"] == "grid":
        raise LossearchError(
            "search > per_family: not with a grid (a grid runs each point once; "
            "use more seeds to repeat)"
        )
    return s


def _explicit_grid(grid_raw: Any, space_raw: Any) -> list[dict[str, Any]]:
    """Compile a ``grid:`` list (each point merged over the fixed values of ``space``)."""
    if not isinstance(grid_raw, list) or not grid_raw:
        raise LossearchError("grid: expected a non-empty list of points")
    shared = space_raw if space_raw is not None else {}
    if not isinstance(shared, Mapping):
        raise LossearchError("space: expected a mapping of dotted config keys")
    for key, spec in shared.items():
        if _parse_param(str(key), spec, f"space > {key}").sampled:
            raise LossearchError(
                f"space > {key}: with an explicit grid, space holds fixed values only"
            )
    points: list[dict[str, Any]] = []
    origins: list[str] = []
    for i, point in enumerate(grid_raw):
        prefix = f"grid[{i}]"
        if not isinstance(point, Mapping):
            raise LossearchError(f"{prefix}: expected a mapping of dotted keys to values")
        for key, spec in point.items():
            if isinstance(spec, Mapping) and set(spec) != {"value"}:
                raise LossearchError(f"{prefix} > {key}: grid points take fixed values")
        merged = {**shared, **point}
        where = {k: (prefix if k in point else "space") for k in merged}
        _, families = _compile(merged, where, prefix)
        (flat,) = _enumerate(families)
        for j, other in enumerate(points):
            if other == flat:
                raise LossearchError(f"{prefix}: the same point as {origins[j]}")
        points.append(flat)
        origins.append(prefix)
    return points


def load_space(
    path_or_mapping: str | Path | Mapping[str, Any],
    overrides: list[str] | dict[str, Any] | None = None,
) -> SearchSpace:
    """Load and validate a search-space YAML (a path, or the mapping itself).

    ``overrides`` (``["model.name_or_path=/models/x"]`` or a dict) are applied to ``base``.
    An override of a key that the space sets fixes it at the override's value instead: the
    key leaves the search space (every trial gets the value; ``first_points`` drop it) and
    is listed in :attr:`SearchSpace.fixed_by_override`; a ``loss.*`` key of the space is not
    applied to ``base`` (the trial's flat config carries it). Raises
    :class:`~lossearch.errors.LossearchError` naming the offending key path (see the module
    docstring for what is checked).
    """
    if isinstance(path_or_mapping, Mapping):
        raw = copy.deepcopy(dict(path_or_mapping))
    else:
        raw = read_yaml(path_or_mapping)
    unknown = sorted(set(raw) - set(TOP_LEVEL_KEYS), key=str)
    if unknown:
        raise LossearchError(
            f"{unknown[0]}: unknown top-level key (known: {', '.join(TOP_LEVEL_KEYS)})"
        )
    base = raw.get("base") or {}
    if not isinstance(base, Mapping):
        raise LossearchError("base: expected a training config mapping")
    base = copy.deepcopy(dict(base))
    space_raw = raw.get("space")
    grid_raw = raw.get("grid")
    settings = _parse_search(raw.get("search"), grid=grid_raw is not None)

    if grid_raw is not None:
        if settings["sampler"] != "grid":
            raise LossearchError("grid: an explicit grid needs search > sampler: grid")
        points = _explicit_grid(grid_raw, space_raw)
        family = Param(
            FAMILY_KEY,
            "grid",
            "categorical",
            choices=tuple(dict.fromkeys(p[FAMILY_KEY] for p in points)),
        )
        families: tuple[Family, ...] = ()
        searched = {k for p in points for k in p}
    else:
        if space_raw is None:
            raise LossearchError("space: missing (give space, or an explicit grid)")
        family, families = _compile(space_raw, {}, "space")
        points = _enumerate(families) if settings["sampler"] == "grid" else []
        searched = {p.key for f in families for p in (f.mix, *f.params) if p is not None}

    fixed: dict[str, Any] = {}
    if overrides:
        items = _override_items(overrides)
        fixed = {k: v for k, v in items.items() if k in searched}
        if grid_raw is not None:
            points = _fix_in_points(points, fixed)
        else:
            families = tuple(_fix_in_family(f, fixed) for f in families)
            if settings["sampler"] == "grid":
                points = _enumerate(families)
        fixed = {k: _fixed_value(families, points, k) for k in fixed}
        # a first point's value of a fixed key would be ignored by the trial: drop it
        settings["first_points"] = [
            {k: v for k, v in point.items() if k not in fixed} for point in settings["first_points"]
        ]
        base_items = {
            k: v for k, v in items.items() if not (k in fixed and k.split(".")[0] == "loss")
        }
        base = apply_overrides(base, base_items)

    try:
        validate(base)
    except LossearchError as err:
        raise LossearchError(f"base: {err}") from None
    for fam in families:
        _probe_family(base, fam)
    if grid_raw is not None:
        for i, flat in enumerate(points):
            try:
                validate(_apply_flat(base, flat))
            except LossearchError as err:
                raise LossearchError(f"grid[{i}]: {err}") from None

    _check_first_points(settings, family.grid_values() if not family.sampled else family.choices)
    if settings["sampler"] == "grid":
        n = len(points)
        if "num_samples" not in (raw.get("search") or {}):
            settings["num_samples"] = n
        elif settings["num_samples"] > n:
            raise LossearchError(
                f"search > num_samples: {settings['num_samples']} exceeds the grid's {n} points "
                "(each point runs once; use more seeds to repeat)"
            )
    sp = SearchSpace(
        raw=raw,
        base=base,
        settings=settings,
        family=family,
        families=families,
        grid=tuple(points),
        fixed_by_override=tuple(fixed.items()),
    )
    if settings["per_family"] is not None:
        given = (raw.get("search") or {}).get("num_samples")
        total = settings["per_family"] * len(sp.family_names)
        if given is not None and given != total:
            raise LossearchError(
                f"search > num_samples: {given}, but per_family {settings['per_family']} x "
                f"{len(sp.family_names)} families = {total} (leave num_samples out)"
            )
        sp = sp.with_per_family(settings["per_family"])
    return sp


def _override_items(overrides: list[str] | Mapping[str, Any]) -> dict[str, Any]:
    """``["a.b=1"]`` or ``{"a.b": 1}`` -> ``{"a.b": 1}`` (YAML-parsed values, last one wins)."""
    if isinstance(overrides, Mapping):
        items = {str(k): v for k, v in overrides.items()}
    else:
        items = {}
        for o in overrides:
            parts, value = parse_override(o)
            items[".".join(parts)] = value
    if FAMILY_KEY in items:
        raise LossearchError(
            "override 'loss.family': the families are set by the space file; edit its "
            "loss.family choices"
        )
    return items


def _coerce_like(p: Param, value: Any) -> Any:
    """An override's value in the kind of ``p`` (YAML reads ``1e-4`` as a string)."""
    numeric = p.kind in ("float", "int") or (
        p.kind in ("categorical", "fixed")
        and all(_is_number(v) for v in (p.choices if p.kind == "categorical" else (p.value,)))
    )
    if not numeric or not isinstance(value, str):
        return value
    try:
        number = float(value)
    except ValueError:
        return value
    if p.kind == "int" and number.is_integer():
        return int(number)
    return number


def _fix_in_family(fam: Family, fixed: Mapping[str, Any]) -> Family:
    """``fam`` with each key of ``fixed`` it has turned into a fixed value."""

    def fix(p: Param | None) -> Param | None:
        if p is None or p.key not in fixed:
            return p
        return Param(p.key, f"override '{p.key}'", "fixed", value=_coerce_like(p, fixed[p.key]))

    mix = fix(fam.mix)
    if mix is not None and mix is not fam.mix:
        _check_mix(mix)
    params = tuple(fix(p) for p in fam.params)
    return Family(fam.name, fam.path, mix, params)  # type: ignore[arg-type]


def _fix_in_points(points: list[dict[str, Any]], fixed: Mapping[str, Any]) -> list[dict[str, Any]]:
    """An explicit grid with the overridden keys set in every point that has them."""
    out: list[dict[str, Any]] = []
    for point in points:
        new = {
            k: (_coerce_like(Param(k, "", "fixed", value=v), fixed[k]) if k in fixed else v)
            for k, v in point.items()
        }
        if new not in out:  # points that differed only in a fixed key are one point now
            out.append(new)
    return out


def _fixed_value(families: tuple[Family, ...], points: list[dict[str, Any]], key: str) -> Any:
    """The value an override fixed ``key`` at, as the trials get it."""
    for fam in families:
        for p in (fam.mix, *fam.params):
            if p is not None and p.key == key:
                return p.value
    for point in points:
        if key in point:
            return point[key]
    return None


def _check_first_points(settings: Mapping[str, Any], families: Sequence[str]) -> None:
    for i, point in enumerate(settings["first_points"]):
        if point[FAMILY_KEY] not in families:
            raise LossearchError(
                f"search > first_points[{i}]: loss.family '{point[FAMILY_KEY]}' is not one of "
                f"the space's families ({', '.join(families)})"
            )
