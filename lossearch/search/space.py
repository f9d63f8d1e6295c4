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
                            mode=sp.settings["mode"] or "max", sampler=sp.make_sampler())

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
    :func:`load_space` raises :class:`~lossearch.errors.LossearchError`, one line naming the
    offending key. The file's structure is the pydantic schema of
    :mod:`lossearch.search.space_schema` (unknown top-level, ``search`` or spec keys, wrong
    types, unknown loss families, a spec with no range, an empty or duplicated choice list,
    a step that does not divide the range; Optuna's distributions reject ``low > high`` and
    ``log`` with ``low <= 0``), reported as the training config reports its keys:
    ``config key 'space.loss.family': unknown loss family 'focl' (known: ...)``. The rest
    names the key's YAML path (``space > loss.focl.gamma: unknown loss family 'focl'``):
    dotted keys in the wrong place, the CE mixing weight's range, conflicting distributions
    of one key, ``first_points``, and dotted keys the training config rejects: every value a
    parameter can take at its ends (``low``, ``high``, an interior point, each choice, the
    fixed value) is applied to ``base`` with :func:`~lossearch.config.apply_overrides` under
    every family it applies to and validated with :func:`~lossearch.config.validate` (the
    loss section through ``lossearch.losses.normalize_spec``).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler

from lossearch.config import (
    apply_overrides,
    parse_override,
    read_yaml,
    refuse_repeated_keys,
    validate,
)
from lossearch.errors import LossearchError
from lossearch.search.samplers import GridPointSampler, PerFamilySampler, make_sampler
from lossearch.search.space_compile import (
    Family,
    Param,
    applies,
    compile_space,
    enumerate_grid,
    explicit_grid,
    is_number,
    mix_rep,
)
from lossearch.search.space_schema import parse_space_file
from lossearch.search.trial_config import (
    CE_WEIGHT_KEY,
    FAMILY_KEY,
    GRID_KEY,
    LOSS_FAMILIES,
    SEEDS_KEY,
    apply_flat,
    family_of,
    flat_point,
    trial_to_config,
)

__all__ = [
    "LOSS_FAMILIES",
    "Family",
    "GridPointSampler",
    "Param",
    "PerFamilySampler",
    "SearchSpace",
    "family_of",
    "load_space",
    "read_yaml",
    "trial_to_config",
]


# --------------------------------------------------------------------------- the space


@dataclass(frozen=True, eq=False)
class SearchSpace:
    """A compiled search space. Plain data, so the bound :meth:`define_by_run` pickles.

    Attributes:
        raw: the YAML mapping as loaded (written to the experiment directory).
        base: the training config tree the trials override.
        settings: the ``search`` section with defaults filled (``sampler``, ``seed``,
            ``num_samples``, ``metric``, ``mode``, ``scheduler``, ``grace_period``,
            ``reduction_factor``, ``max_concurrent``, ``num_seeds``, ``n_startup_trials``,
            ``first_points``, ``per_family``).
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
                "search > per_family: not with a grid (a grid runs each point once; use more "
                "seeds to repeat)"
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
            if self.grid:
                values = [p[key] for p in self.grid if p[FAMILY_KEY] == name and key in p]
            else:
                sampled = [p for p in self._family(name).every if p.key == key and p.sampled]
                values = sampled[0].probes() if sampled else []
            numbers = [v for v in values if is_number(v)]
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
            values = {p.key: p.suggest(trial) for p in fam.params if applies(p, name, w)}
            out = flat_point(name, w, values)
        if self.seeds is not None:
            out[SEEDS_KEY] = list(self.seeds)
        return out

    def make_sampler(self, seed: int | None = None) -> BaseSampler:
        """The Optuna sampler of ``settings["sampler"]``; ``seed`` defaults to ``settings``.

        See :func:`lossearch.search.samplers.make_sampler`; with ``settings["per_family"]``
        a :class:`PerFamilySampler` over this space's families.
        """
        per_family = self.settings.get("per_family") is not None
        return make_sampler(
            self.sampler,
            self.settings["seed"] if seed is None else seed,
            self.settings["n_startup_trials"],
            grid_size=len(self.grid),
            per_family=self.family_names if per_family else (),
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


def _check(where: str, base: dict[str, Any], flat: Mapping[str, Any] | None = None) -> None:
    """Validate ``base`` with a trial's ``flat`` config applied; errors start with ``where``."""
    try:
        validate(base if flat is None else apply_flat(base, flat))
    except LossearchError as err:
        raise LossearchError(f"{where}: {err}") from None


def _probe_family(base: dict[str, Any], fam: Family) -> None:
    """Apply every probe value of ``fam``'s parameters to ``base`` and validate."""
    rep = mix_rep(fam.mix) if fam.mix is not None else None
    head: dict[str, Any] = {FAMILY_KEY: fam.name}
    if rep is not None:
        head[CE_WEIGHT_KEY] = rep
    _check(fam.path, base, head)
    for p in fam.every:
        for v in p.probes() if applies(p, fam.name, rep) else []:
            try:
                _check(p.path, base, {**head, p.key: v})
            except LossearchError as err:
                if isinstance(p.dist, FloatDistribution) and "valid integer" in str(err):
                    raise LossearchError(
                        f"{err} (an integer field: add 'type: int' to the range)"
                    ) from None
                raise


_CONFIG_SECTIONS = {"task", "model", "loss", "optim", "eval", "scaling"}
"""Top-level keys of a training config (:class:`~lossearch.config.TrainConfig`)."""


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
        if "base" not in raw and "space" not in raw and raw.keys() & _CONFIG_SECTIONS:
            raise LossearchError(
                f"{path_or_mapping} is a training config, not a search space: use lossearch "
                "train --config, or put it under base: with a space: (docs/search_space.md)"
            )
    file = parse_space_file(raw)
    settings = file.settings()
    base = copy.deepcopy(file.base)
    families: tuple[Family, ...] = ()
    if file.grid is not None:
        if settings["sampler"] != "grid":
            raise LossearchError("grid: an explicit grid needs search > sampler: grid")
        points = explicit_grid(file.grid, file.space)
        names = tuple(dict.fromkeys(p[FAMILY_KEY] for p in points))
        family = Param(FAMILY_KEY, "grid", CategoricalDistribution(names))
        searched = {k: Param(k, "grid", value=v) for p in reversed(points) for k, v in p.items()}
    else:
        if file.space is None or file.space.family is None:
            raise LossearchError("space: 'loss.family' is required (a family name or choices)")
        family, families = compile_space(file.space.family, file.space.params, "space > {}".format)
        points = enumerate_grid(families) if settings["sampler"] == "grid" else []
        names = tuple(f.name for f in families)
        searched = {p.key: p for f in reversed(families) for p in f.every}

    fixed: dict[str, Any] = {}
    if overrides:
        items = _override_items(overrides)
        fixed = {k: _coerce_like(searched[k], v) for k, v in items.items() if k in searched}
        _refuse_unsearched_loss_weights(items, fixed)
        if file.grid is not None:
            fixed_points = [{k: fixed.get(k, v) for k, v in p.items()} for p in points]
            # points that differed only in a fixed key are one point now
            points = [p for i, p in enumerate(fixed_points) if p not in fixed_points[:i]]
        else:
            families = tuple(f.fixing(fixed) for f in families)
            if settings["sampler"] == "grid":
                points = enumerate_grid(families)
        # a first point's value of a fixed key would be ignored by the trial: drop it
        settings["first_points"] = [
            {k: v for k, v in point.items() if k not in fixed} for point in settings["first_points"]
        ]
        base_items = {k: v for k, v in items.items() if not (k in fixed and k.startswith("loss."))}
        base = apply_overrides(base, base_items)

    _check("base", base)
    for fam in families:
        _probe_family(base, fam)
    for i, flat in enumerate(points if file.grid is not None else []):
        _check(f"grid[{i}]", base, flat)
    for i, point in enumerate(settings["first_points"]):
        if point[FAMILY_KEY] not in names:
            raise LossearchError(
                f"search > first_points[{i}]: loss.family '{point[FAMILY_KEY]}' is not one of "
                f"the space's families ({', '.join(names)})"
            )
        sampled = {p.key for f in families if f.name == point[FAMILY_KEY]
                   for p in f.every if p.sampled}
        extra = [k for k in point if k != FAMILY_KEY and k not in sampled]
        if families and extra:  # Optuna keeps only what the trial samples: it was dropped
            raise LossearchError(
                f"search > first_points[{i}]: '{extra[0]}' is not sampled for family "
                f"{point[FAMILY_KEY]}, so a first point cannot set it (set it in base:, or "
                "search it in space:)"
            )
    given = "num_samples" in file.search.model_fields_set
    if settings["sampler"] == "grid" and not given:
        settings["num_samples"] = len(points)
    elif settings["sampler"] == "grid" and settings["num_samples"] > len(points):
        raise LossearchError(
            f"search > num_samples: {settings['num_samples']} exceeds the grid's {len(points)} "
            "points (each point runs once; use more seeds to repeat)"
        )
    sp = SearchSpace(
        raw, base, settings, family, families, tuple(points), fixed_by_override=tuple(fixed.items())
    )
    if settings["per_family"] is not None:
        total = settings["per_family"] * len(names)
        if given and settings["num_samples"] != total:
            raise LossearchError(
                f"search > num_samples: {settings['num_samples']}, but per_family "
                f"{settings['per_family']} x {len(names)} families = {total} "
                "(leave num_samples out)"
            )
        sp = sp.with_per_family(settings["per_family"])
    return sp


def _refuse_unsearched_loss_weights(items: Mapping[str, Any], fixed: Mapping[str, Any]) -> None:
    """A trial's loss weights come from its family (``loss.family``, ``loss.ce.weight`` of
    the space), never from the base config: an override of a weight the space does not
    search (``loss.ce.weight=0.5``, ``loss.focal=0.4``) would be ignored. One line instead."""
    for key, value in items.items():
        parts = key.split(".")
        weight = (len(parts) == 3 and parts[2] == "weight") or (
            len(parts) == 2 and parts[1] in LOSS_FAMILIES and not isinstance(value, Mapping)
        )
        if parts[0] == "loss" and weight and key not in fixed:
            raise LossearchError(
                f"override '{key}': a trial's loss weights come from its family and the space's "
                "loss.ce.weight, and this space does not search it; set it in the space's "
                "space: section instead"
            )


def _override_items(overrides: list[str] | Mapping[str, Any]) -> dict[str, Any]:
    """``["a.b=1"]`` or ``{"a.b": 1}`` -> ``{"a.b": 1}`` (YAML-parsed values); a key given
    twice is an error (the last one would win without a word)."""
    if isinstance(overrides, Mapping):
        items = {str(k): v for k, v in overrides.items()}
    else:
        pairs = [(".".join(parts), value) for parts, value in map(parse_override, overrides)]
        refuse_repeated_keys([k for k, _ in pairs])
        items = dict(pairs)
    if FAMILY_KEY in items:
        raise LossearchError(
            "override 'loss.family': the families are set by the space file; edit its "
            "loss.family choices"
        )
    return items


def _coerce_like(p: Param, value: Any) -> Any:
    """An override's value in the kind of ``p``'s values (YAML reads ``1e-4`` as a string)."""
    if not isinstance(value, str) or not all(is_number(v) for v in p.probes()):
        return value
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if isinstance(p.dist, IntDistribution) and number.is_integer() else number
