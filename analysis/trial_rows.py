"""One trial of a lossearch search as rows: of the trials frame (one per seed) and of the
history (one per epoch, metric and seed).

Input is a :class:`~analysis.tune_files.TuneTrial` (what Tune's files say) and the search's
settings (``lossearch_search.yaml`` as :func:`lossearch.experiment.read_meta` returns it, or
``{}`` without one); no file is read here. The columns are documented in
:func:`analysis.load.load_trials` and :func:`analysis.load.load_history`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from analysis.records import dotted_get, is_number
from analysis.tune_files import TuneResult, TuneTrial, first_error_line
from lossearch.experiment import check_mode, default_mode

#: Config keys that are not searched parameters (they have their own columns).
NOT_PARAMS = frozenset({"seeds", "seed", "loss.family"})
_SEED_KEY = re.compile(r"^seed(\d+)/(.+)$")


def metric_mode(
    metric: str,
    *,
    search_metric: str | None = None,
    search_mode: str | None = None,
    modes: Mapping[str, str] | None = None,
) -> str:
    """Which direction is better for ``metric``: ``"max"`` or ``"min"``.

    The rule, first match wins: an explicit entry in ``modes``; the search's own metric takes
    the search's ``mode`` (from ``lossearch_search.yaml``); a name starting with ``"loss"``
    (``loss``, ``loss.ce``, ...) is min-better; everything else is max-better.
    """
    if modes and metric in modes:
        return check_mode(modes[metric])
    if search_metric is not None and metric == search_metric and search_mode:
        return check_mode(search_mode)
    return default_mode(metric)


def split_metrics(result: TuneResult) -> tuple[dict[str, float], dict[int, dict[str, float]]]:
    """One result's numeric values: trial-level ``{metric: v}`` and per-seed ``{seed: {metric:
    v}}`` (from the ``seed<k>/<metric>`` keys); null counts as NaN, other values are left out."""
    trial_level: dict[str, float] = {}
    per_seed: dict[int, dict[str, float]] = {}
    for key, value in result.reported().items():
        if not (is_number(value) or value is None):
            continue
        number = math.nan if value is None else float(value)
        match = _SEED_KEY.match(key)
        if match:
            per_seed.setdefault(int(match.group(1)), {})[match.group(2)] = number
        else:
            trial_level[key] = number
    return trial_level, per_seed


def history_rows(experiment: str, trial: TuneTrial) -> list[tuple[Any, ...]]:
    """``(experiment, trial_id, seed, epoch, metric, value)`` for every value the trial
    reported; ``seed`` is None for trial-level keys."""
    rows: list[tuple[Any, ...]] = []
    for i, result in enumerate(trial.results, start=1):
        epoch = result.number(i)
        trial_level, per_seed = split_metrics(result)
        rows.extend((experiment, trial.trial_id, None, epoch, m, v) for m, v in trial_level.items())
        for seed, metrics in per_seed.items():
            rows.extend((experiment, trial.trial_id, seed, epoch, m, v) for m, v in metrics.items())
    return rows


def loss_family(base_loss: Any, config: Mapping[str, Any]) -> str | None:
    """The trial's ``"loss.family"``; without one, ``"ce"`` when CE is the only positively
    weighted component of the base loss with the trial's weights, else the others joined by
    ``+`` (None when nothing is weighted)."""
    if "loss.family" in config:
        return str(config["loss.family"])
    spec: dict[str, Any] = {}
    if isinstance(base_loss, Mapping):
        for name, comp in base_loss.items():
            if isinstance(comp, Mapping):
                spec[name] = comp.get("weight", 1.0)
            elif is_number(comp):
                spec[name] = comp
    for key, value in config.items():
        parts = key.split(".")
        if parts[0] == "loss" and len(parts) == 3 and parts[2] == "weight" and is_number(value):
            spec[parts[1]] = value
        elif parts[0] == "loss" and len(parts) == 2 and is_number(value):
            spec[parts[1]] = value
    active = sorted(name for name, w in spec.items() if is_number(w) and w > 0)
    if not active:
        return None
    others = [n for n in active if n != "ce"]
    return "+".join(others) if others else "ce"


def _status(trial: TuneTrial, epochs: int, configured: int | None) -> str:
    if trial.status == "ERROR":
        return "errored"
    if trial.status == "TERMINATED":
        return "pruned" if configured is not None and epochs < configured else "finished"
    return "running"


def _seeds_of(trial: TuneTrial, settings: Mapping[str, Any]) -> list[int]:
    """The trial's ``"seeds"``, else the search's ``seeds``, else its single ``seed``."""
    seeds = trial.config.get("seeds")
    if isinstance(seeds, (list, tuple)) and all(is_number(s) for s in seeds):
        return [int(s) for s in seeds]
    seeds = settings.get("seeds")
    if isinstance(seeds, (list, tuple)) and seeds and all(is_number(s) for s in seeds):
        return [int(s) for s in seeds]
    single = trial.config.get("seed", dotted_get(settings.get("base_config"), "seed"))
    return [int(single)] if is_number(single) else []


def _param_value(value: Any) -> Any:
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def _summarise(
    series: list[float], mode: str, fallback: Mapping[str, Any] | None
) -> tuple[float, float]:
    """(final, best) of one metric's per-epoch values; ``fallback`` is Tune's metric_analysis."""
    values = np.asarray(series, dtype=float)
    finite = values[~np.isnan(values)]
    final = float(finite[-1]) if finite.size else math.nan
    best = math.nan
    if finite.size:
        best = float(finite.max()) if mode == "max" else float(finite.min())
    extra = (fallback or {}).get(mode)
    if is_number(extra) and not math.isnan(float(extra)):
        pick = max if mode == "max" else min
        best = float(extra) if math.isnan(best) else pick(best, float(extra))
    return final, best


def trial_rows(
    experiment: str,
    settings: Mapping[str, Any],
    trial: TuneTrial,
    modes: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The trials-frame rows of one trial: one per seed (see :func:`analysis.load_trials`)."""
    base = settings.get("base_config")
    base = base if isinstance(base, Mapping) else {}
    config = trial.config
    epochs = max((r.number(i) for i, r in enumerate(trial.results, 1)), default=0)
    configured = config.get("optim.epochs", dotted_get(base, "optim.epochs"))
    status = _status(trial, epochs, int(configured) if is_number(configured) else None)
    last = trial.results[-1].time_total_s if trial.results else None
    wall = last if last is not None else trial.runtime.last_result.get("time_total_s")

    split = [split_metrics(r) for r in trial.results]
    seed_keys = sorted({s for _, per_seed in split for s in per_seed})
    seeds = _seeds_of(trial, settings)
    row_seeds: list[int | None]
    if seed_keys:
        row_seeds = list(dict.fromkeys([*seeds, *seed_keys]))
    else:
        row_seeds = [seeds[0] if len(seeds) == 1 else None]
    seed_metrics = {m for _, per_seed in split for d in per_seed.values() for m in d}
    trial_metrics = {m for tl, _ in split for m in tl}

    common: dict[str, Any] = {
        "experiment": experiment,
        "trial_id": trial.trial_id,
        "status": status,
        "error": (first_error_line(trial.error) or "error (no error.txt found)")
        if status == "errored"
        else None,
        "task": config.get("task.name", dotted_get(base, "task.name")),
        "model": config.get("model.name_or_path", dotted_get(base, "model.name_or_path")),
        "loss": loss_family(dotted_get(base, "loss"), config),
        "epochs": int(epochs),
        "wall_s": float(wall) if is_number(wall) else math.nan,
        "start_time": math.nan if trial.runtime.start_time is None else trial.runtime.start_time,
    }
    common.update(
        {f"param.{k}": _param_value(v) for k, v in config.items() if k not in NOT_PARAMS}
    )

    rows = []
    for seed in row_seeds:
        row = dict(common, seed=seed)
        for metric in sorted(trial_metrics | seed_metrics):
            if seed is not None and metric in seed_metrics:
                series = [ps.get(seed, {}).get(metric, math.nan) for _, ps in split]
                key = f"seed{seed}/{metric}"
            else:
                series = [tl.get(metric, math.nan) for tl, _ in split]
                key = metric
            mode = metric_mode(
                metric,
                search_metric=settings.get("metric"),
                search_mode=settings.get("mode"),
                modes=modes,
            )
            fallback = trial.runtime.metric_analysis.get(key) if trial.patched else None
            row[f"final.{metric}"], row[f"best.{metric}"] = _summarise(series, mode, fallback)
        rows.append(row)
    return rows
