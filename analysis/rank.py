"""Which loss family wins: per group, each family's best configuration against the CE baseline.

Input is a trials frame from :func:`analysis.load.load_trials` (one row per trial and seed).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import pandas as pd
from scipy import stats

from lossearch.errors import LossearchError

#: Statuses whose rows count in rankings: pruned trials are real (if short) training runs;
#: errored and still-running trials are left out.
COUNTED_STATUSES = ("finished", "pruned")
BASELINE = "ce"
RANK_COLUMNS = ["loss", "best", "mean", "std", "n", "rank", "improvement_vs_ce_pct", "p_value"]


def _keys(by: str | Sequence[str] | None) -> list[str]:
    if by is None:
        return []
    return [by] if isinstance(by, str) else list(by)


def metric_column(df: pd.DataFrame, metric: str) -> str:
    """``best.<metric>``, or a one-line :class:`LossearchError` naming the metrics there are."""
    column = metric if metric.startswith("best.") else f"best.{metric}"
    if column not in df.columns:
        known = sorted(c[len("best.") :] for c in df.columns if c.startswith("best."))
        raise LossearchError(
            f"unknown metric '{metric}'; the trials report: {', '.join(known) or 'nothing'}"
        )
    return column


def check_mode(mode: str) -> str:
    if mode not in ("max", "min"):
        raise LossearchError(f"mode must be 'max' or 'min', got '{mode}'")
    return mode


def counted_rows(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Rows that count in a comparison: finished or pruned, with a value for ``best.<metric>``."""
    column = metric_column(df, metric)
    keep = df["status"].isin(COUNTED_STATUSES) if "status" in df.columns else True
    return df[keep & df[column].notna()]


def configurations(
    df: pd.DataFrame, metric: str, by: str | Sequence[str] | None = ("task", "model")
) -> pd.DataFrame:
    """One row per configuration: a group, a loss family and one set of ``param.*`` values.

    Rows that differ only by seed (whether from one trial or several) form one configuration.
    Only finished and pruned rows with a value count.

    Returns:
        A frame with the grouping keys, ``loss``, the ``param.*`` columns, and ``mean``,
        ``std`` (sample std, ddof=1; NaN for one seed), ``n`` (seeds), ``values`` (the seeds'
        ``best.<metric>`` values, a list of floats).
    """
    keys = _keys(by)
    missing = [k for k in [*keys, "loss"] if k not in df.columns]
    if missing:
        raise LossearchError(f"trials frame has no column(s): {', '.join(missing)}")
    column = metric_column(df, metric)
    rows = counted_rows(df, metric)
    params = [c for c in rows.columns if c.startswith("param.")]
    config_keys = [*keys, "loss", *params]
    if rows.empty:
        return pd.DataFrame(columns=[*config_keys, "mean", "std", "n", "values"])
    grouped = rows.groupby(config_keys, dropna=False, sort=False)[column]
    out = grouped.agg(
        mean="mean", std=lambda s: s.std(ddof=1) if len(s) > 1 else math.nan, n="count"
    )
    out["values"] = grouped.agg(lambda s: [float(v) for v in s])
    return out.reset_index()


def _welch(a: Sequence[float], b: Sequence[float], alternative: str) -> float:
    if len(a) < 2 or len(b) < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # zero variance: p is NaN
        result = stats.ttest_ind(a, b, equal_var=False, alternative=alternative)
    return float(result.pvalue)


def rank_losses(
    df: pd.DataFrame,
    metric: str = "exact_match",
    by: str | Sequence[str] | None = ("task", "model"),
    mode: str = "max",
    *,
    alternative: str = "two-sided",
) -> pd.DataFrame:
    """Rank the loss families of each group by their best configuration.

    Per group (``by``, e.g. task and model) and loss family, the family's best configuration
    is the one with the best mean of ``best.<metric>`` over its seeds (see
    :func:`configurations`). Only ``finished`` and ``pruned`` rows count; errored and running
    trials are left out.

    The significance test compares the family's best configuration with CE's best
    configuration across seeds with Welch's t-test (``scipy.stats.ttest_ind`` with
    ``equal_var=False``), two-sided by default; ``alternative="better"`` makes it one-sided
    in favour of the family (``greater`` for mode max, ``less`` for min). It needs at least
    two seeds on each side; otherwise, and for CE itself, ``p_value`` is NaN. The sign of
    ``improvement_vs_ce_pct`` says in which direction a small two-sided p points.

    Args:
        df: a trials frame (:func:`analysis.load.load_trials`).
        metric: names the ``best.<metric>`` column to compare.
        by: grouping column(s); ``None`` or ``()`` ranks over all rows at once.
        mode: ``"max"`` if higher is better, ``"min"`` if lower is better.
        alternative: ``"two-sided"`` or ``"better"``.

    Returns:
        One row per group and family, sorted by group then rank, with columns: the grouping
        keys; ``loss``; ``best`` (best single-seed value of the best configuration);
        ``mean``, ``std`` (ddof=1), ``n`` (seeds) of that configuration; ``rank`` (1 = best
        mean in the group; ties share the lowest rank, "min" method); ``improvement_vs_ce_pct``
        (``100 * (mean - ce_mean) / |ce_mean|``, sign flipped for mode min so that positive
        always means better than CE; 0 for CE; NaN when the group has no CE or CE's mean is
        0); ``p_value``.
    """
    check_mode(mode)
    if alternative not in ("two-sided", "better"):
        raise LossearchError(f"alternative must be 'two-sided' or 'better', got '{alternative}'")
    scipy_alternative = (
        "two-sided" if alternative == "two-sided" else ("greater" if mode == "max" else "less")
    )
    keys = _keys(by)
    configs = configurations(df, metric, keys)
    if configs.empty:
        return pd.DataFrame(columns=[*keys, *RANK_COLUMNS])
    ascending = mode == "min"
    configs = configs.sort_values("mean", ascending=ascending, kind="stable")
    best_per_family = configs.groupby([*keys, "loss"], dropna=False, sort=False).head(1)

    records = []
    group_iter = (
        best_per_family.groupby(keys, dropna=False, sort=True) if keys else [((), best_per_family)]
    )
    for group_key, fam in group_iter:
        group_values = group_key if isinstance(group_key, tuple) else (group_key,)
        baseline = fam[fam["loss"] == BASELINE]
        ce_mean = float(baseline["mean"].iloc[0]) if len(baseline) else math.nan
        ce_values = baseline["values"].iloc[0] if len(baseline) else []
        ranks = fam["mean"].rank(method="min", ascending=ascending).astype(int)
        for (_, row), rank in zip(fam.iterrows(), ranks, strict=True):
            values = row["values"]
            best = max(values) if mode == "max" else min(values)
            if math.isnan(ce_mean) or ce_mean == 0:
                improvement = math.nan
            else:
                sign = 1.0 if mode == "max" else -1.0
                improvement = sign * 100.0 * (row["mean"] - ce_mean) / abs(ce_mean)
            is_ce = row["loss"] == BASELINE
            p = (
                math.nan
                if is_ce or not len(baseline)
                else _welch(values, ce_values, scipy_alternative)
            )
            records.append(
                {
                    **dict(zip(keys, group_values, strict=True)),
                    "loss": row["loss"],
                    "best": float(best),
                    "mean": float(row["mean"]),
                    "std": float(row["std"]),
                    "n": int(row["n"]),
                    "rank": int(rank),
                    "improvement_vs_ce_pct": 0.0
                    if is_ce and not math.isnan(improvement)
                    else improvement,
                    "p_value": p,
                }
            )
    out = pd.DataFrame.from_records(records, columns=[*keys, *RANK_COLUMNS])
    out = out.sort_values([*keys, "rank", "loss"], kind="stable").reset_index(drop=True)
    out["n"] = out["n"].astype("int64")
    out["rank"] = out["rank"].astype("int64")
    return out


def best_configurations(
    df: pd.DataFrame,
    metric: str = "exact_match",
    by: str | Sequence[str] | None = ("task", "model"),
    mode: str = "max",
) -> pd.DataFrame:
    """The best configuration of each group and family (the one :func:`rank_losses` ranks).

    Returns:
        The :func:`configurations` columns (grouping keys, ``loss``, ``param.*``, ``mean``,
        ``std``, ``n``, ``values``) for one configuration per group and family, best first.
    """
    check_mode(mode)
    keys = _keys(by)
    configs = configurations(df, metric, keys)
    configs = configs.sort_values("mean", ascending=mode == "min", kind="stable")
    return configs.groupby([*keys, "loss"], dropna=False, sort=False).head(1).reset_index(drop=True)
