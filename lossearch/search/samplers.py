"""Optuna samplers of a search space: the grid's, and the per-family sampler of fair budgets.

:func:`make_sampler` builds the sampler that ``search.sampler`` names (see
:meth:`lossearch.search.space.SearchSpace.make_sampler`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, GridSampler

from lossearch.search.trial_config import FAMILY_KEY, GRID_KEY


def make_sampler(
    kind: str,
    seed: int | None,
    n_startup_trials: int,
    grid_size: int = 0,
    per_family: Sequence[str] = (),
) -> BaseSampler:
    """``kind``'s sampler: ``tpe`` (multivariate, group, constant liar; Optuna's experimental
    warnings silenced), ``random``, or ``grid`` (a :class:`GridPointSampler` over
    ``{"grid_point": [0, ..., grid_size-1]}``). With ``per_family`` names: a
    :class:`PerFamilySampler` holding one such sampler per family, the i-th seeded ``seed + i``.
    """
    if per_family:
        return PerFamilySampler(
            per_family,
            [
                make_sampler(kind, None if seed is None else seed + i, n_startup_trials)
                for i in range(len(per_family))
            ],
        )
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "grid":
        return GridPointSampler({GRID_KEY: list(range(grid_size))}, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            multivariate=True,
            group=True,
            constant_liar=True,
            n_startup_trials=n_startup_trials,
            seed=seed,
        )


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
