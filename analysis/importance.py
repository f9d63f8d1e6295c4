"""Which searched parameter mattered: Optuna's importance evaluators on a rebuilt study."""

from __future__ import annotations

import math
import warnings
from typing import Any

import pandas as pd

from analysis.rank import counted_rows, metric_column
from lossearch.errors import LossearchError
from lossearch.experiment import check_mode

IMPORTANCE_COLUMNS = ["param", "importance"]
EVALUATORS = ("ped-anova", "fanova", "mdi")
#: The loss family (the trials frame's ``loss`` column) takes part as this parameter.
FAMILY_PARAM = "loss.family"


def _trial_table(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per trial: its parameters (without the prefix) and the mean over its seeds."""
    column = metric_column(df, metric)
    rows = counted_rows(df, metric)
    params = [c for c in rows.columns if c.startswith("param.")]
    if "trial_id" not in rows.columns:  # a hand-made frame: every row is a trial
        rows = rows.assign(trial_id=range(len(rows)))
    keys = [k for k in ("experiment", "trial_id") if k in rows.columns]
    agg: dict[str, Any] = {c: "first" for c in [*params, "loss"] if c in rows.columns}
    agg[column] = "mean"
    table = rows.groupby(keys, dropna=False, sort=False).agg(agg).reset_index(drop=True)
    table = table.rename(columns={c: c[len("param.") :] for c in params})
    table = table.rename(columns={"loss": FAMILY_PARAM, column: "value"})
    return table


def _distribution(values: pd.Series) -> Any:
    import optuna

    present = values.dropna()
    numeric = pd.api.types.is_numeric_dtype(present) and not pd.api.types.is_bool_dtype(present)
    if numeric:
        low, high = float(present.min()), float(present.max())
        log = low > 0 and high / low > 100
        return optuna.distributions.FloatDistribution(low, high, log=log)
    return optuna.distributions.CategoricalDistribution(sorted({str(v) for v in present}))


def _evaluator(name: str, seed: int, n_trials: int) -> Any:
    from optuna import importance

    if name == "ped-anova":
        # Optuna's default keeps the top 10 %; with a small study that is one trial, so the
        # top set is widened to about 5 trials (at most half of them).
        quantile = min(0.5, max(0.1, 5 / max(n_trials, 1)))
        return importance.PedAnovaImportanceEvaluator(target_quantile=quantile)
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise LossearchError(
            f"importance evaluator '{name}' needs scikit-learn (pip install scikit-learn); "
            "'ped-anova' does not"
        ) from None
    if name == "fanova":
        return importance.FanovaImportanceEvaluator(seed=seed)
    return importance.MeanDecreaseImpurityImportanceEvaluator(seed=seed)


def parameter_importance(
    df: pd.DataFrame,
    metric: str = "exact_match",
    mode: str = "max",
    *,
    evaluator: str = "ped-anova",
    seed: int = 0,
) -> pd.DataFrame:
    """Importance of each searched parameter for ``best.<metric>``, by Optuna's evaluators.

    A study is rebuilt from the trials (``optuna.create_study`` plus one
    ``optuna.trial.create_trial`` per trial; its value is the mean of ``best.<metric>`` over
    the trial's seeds; finished and pruned trials only) and handed to
    ``optuna.importance.get_param_importances``. The parameters are the ``param.*`` columns
    with at least two distinct values, named without the prefix (``optim.lr``), plus the loss
    family as ``loss.family`` when more than one family occurs. Distributions are inferred
    from the values: numbers become a ``FloatDistribution`` over the observed range (log scale
    when all values are positive and span more than a factor of 100), anything else a
    ``CategoricalDistribution``. A trial carries only the parameters that apply to it (not
    NaN), as in the search itself.

    Evaluators: ``"ped-anova"`` (default; Optuna 5's default, PED-ANOVA, which handles
    conditional parameters such as ``loss.focal.gamma``; the top quantile is widened to about
    5 trials for small studies), ``"fanova"`` and ``"mdi"`` (mean decrease impurity). The last
    two need scikit-learn and, as Optuna implements them, only assess parameters present in
    every trial: conditional parameters get NaN.

    Raises:
        LossearchError: fewer than 2 finished/pruned trials with a value, no parameter with
            two distinct values, an unknown metric or evaluator.

    Returns:
        Columns ``param`` (str) and ``importance`` (float, summing to 1 over the assessed
        parameters), one row per searched parameter, most important first.
    """
    import optuna

    check_mode(mode)
    if evaluator not in EVALUATORS:
        raise LossearchError(
            f"unknown importance evaluator '{evaluator}' (choose from {', '.join(EVALUATORS)})"
        )
    table = _trial_table(df, metric)
    if len(table) < 2:
        raise LossearchError(
            f"parameter importance needs at least 2 finished or pruned trials with "
            f"'{metric}'; got {len(table)}"
        )
    candidates = [c for c in table.columns if c != "value"]
    searched = [c for c in candidates if table[c].dropna().astype(str).nunique() >= 2]
    if not searched:
        raise LossearchError(
            "parameter importance needs parameters that vary between trials; none do"
        )
    distributions = {name: _distribution(table[name]) for name in searched}

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's experimental and small-sample warnings
            study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
            for _, row in table.iterrows():
                params = {}
                for name in searched:
                    value = row[name]
                    if value is None or (isinstance(value, float) and math.isnan(value)):
                        continue
                    dist = distributions[name]
                    params[name] = (
                        str(value)
                        if isinstance(dist, optuna.distributions.CategoricalDistribution)
                        else float(value)
                    )
                study.add_trial(
                    optuna.trial.create_trial(
                        params=params,
                        distributions={n: distributions[n] for n in params},
                        value=float(row["value"]),
                    )
                )
            scores = optuna.importance.get_param_importances(
                study, evaluator=_evaluator(evaluator, seed, len(table))
            )
    finally:
        optuna.logging.set_verbosity(verbosity)

    out = pd.DataFrame(
        {
            "param": searched,
            "importance": [float(scores.get(name, math.nan)) for name in searched],
        }
    )
    return out.sort_values("importance", ascending=False, na_position="last").reset_index(drop=True)
