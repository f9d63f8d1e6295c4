"""Which loss family wins: per group, each family's best configuration against the CE baseline.

Input is a trials frame from :func:`analysis.load.load_trials` (one row per trial and seed).
A ranking compares like with like: only ``finished`` trials that ran the group's full epoch
budget enter it (:func:`ranked_rows`); what it leaves out is said in a :class:`RankingWarning`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis.load import STATUSES
from lossearch.errors import LossearchError
from lossearch.experiment import check_mode

#: Statuses whose rows count in diagnostics (importance, per-trial plots): pruned trials are
#: real (if short) training runs; errored and still-running trials are left out.
COUNTED_STATUSES = ("finished", "pruned")
#: The only status that enters a ranking: a pruned trial trained for fewer epochs.
RANKED_STATUS = "finished"
BASELINE = "ce"
CONFIDENCE = 0.95
RANK_COLUMNS = [
    "loss",
    "best",
    "mean",
    "std",
    "n",
    "rank",
    "delta_vs_ce",
    "delta_ci_low",
    "delta_ci_high",
    "p_value",
]


class RankingWarning(UserWarning):
    """Rows a ranking left out (not finished, an unknown status, fewer epochs, no value)."""


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


def _statuses(df: pd.DataFrame) -> pd.Series:
    return df["status"].astype(object).where(df["status"].notna(), "<missing>").astype(str)


def check_statuses(df: pd.DataFrame) -> list[str]:
    """Fail when no row has a status of :data:`analysis.load.STATUSES`; else say what is dropped.

    A frame whose ``status`` column holds none of ``finished``/``pruned``/``errored``/
    ``running`` (Ray Tune's ``TERMINATED``, say) would rank nothing at all: that is a
    :class:`LossearchError` naming the statuses found. Rows of an unknown status next to
    known ones are dropped; the returned notes say how many of which. No ``status`` column,
    or an empty frame: nothing to check.
    """
    if "status" not in df.columns or df.empty:
        return []
    statuses = _statuses(df)
    unknown = statuses[~statuses.isin(STATUSES)]
    if unknown.empty:
        return []
    found = ", ".join(f"'{s}'" for s in sorted(statuses.unique()))
    if len(unknown) == len(statuses):
        raise LossearchError(
            f"no row has a known status ({', '.join(STATUSES)}); found {found}: "
            "is this a frame from analysis.load_trials?"
        )
    return [
        f"dropped {count} rows of status '{status}' (known: {', '.join(STATUSES)})"
        for status, count in sorted(unknown.value_counts().items())
    ]


def counted_rows(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Rows that count in diagnostics: finished or pruned, with a value for ``best.<metric>``.

    Rankings use the stricter :func:`ranked_rows`. A frame with no known status at all is a
    :class:`LossearchError` (:func:`check_statuses`).
    """
    column = metric_column(df, metric)
    check_statuses(df)
    keep = df["status"].isin(COUNTED_STATUSES) if "status" in df.columns else True
    return df[keep & df[column].notna()]


def _n_trials(rows: pd.DataFrame) -> int:
    ids = [c for c in ("experiment", "trial_id") if c in rows.columns]
    return len(rows.drop_duplicates(ids)) if "trial_id" in ids else len(rows)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _group_label(keys: list[str], values: tuple) -> str:
    return ", ".join(f"{k}={v}" for k, v in zip(keys, values, strict=True)) or "all rows"


def ranked_rows(
    df: pd.DataFrame, metric: str, by: str | Sequence[str] | None = ("task", "model")
) -> tuple[pd.DataFrame, list[str]]:
    """The rows a ranking compares, and one note per kind of row it left out.

    Kept: rows of status ``finished`` (pruned, errored and running trials stay in the trials
    frame for diagnosis but never rank) with a value for ``best.<metric>``, that ran the full
    epoch budget of their group (``by``): ``epochs`` equal to the maximum ``epochs`` among
    the group's finished rows, so that every family is compared at the same budget. Without
    an ``epochs`` column (or where a group has no epoch counts) the budget is not checked;
    without a ``status`` column every row counts as finished.

    Raises:
        LossearchError: no row has a known status (:func:`check_statuses`), a missing column.
    """
    keys = _keys(by)
    column = metric_column(df, metric)
    missing = [k for k in keys if k not in df.columns]
    if missing:
        raise LossearchError(f"trials frame has no column(s): {', '.join(missing)}")
    notes = check_statuses(df)
    rows = df
    if "status" in df.columns:
        statuses = _statuses(df)
        left = df[statuses.isin(STATUSES) & (statuses != RANKED_STATUS)]
        if len(left):
            parts = [
                f"{_plural(_n_trials(grp), 'trial')} {status}"
                for status, grp in left.groupby(_statuses(left), sort=True)
            ]
            notes.append(f"not ranked (only finished trials rank): {', '.join(parts)}")
        rows = df[statuses == RANKED_STATUS]
    no_value = rows[rows[column].isna()]
    if len(no_value):
        notes.append(
            f"not ranked: {_plural(len(no_value), 'finished run')} without a value for {column}"
        )
    rows = rows[rows[column].notna()]
    if "epochs" in rows.columns and len(rows):
        epochs = pd.to_numeric(rows["epochs"], errors="coerce")
        if keys:
            budget = epochs.groupby([rows[k] for k in keys], dropna=False).transform("max")
        else:
            budget = pd.Series(epochs.max(), index=rows.index)
        short = budget.notna() & ~(epochs == budget)
        if short.any():
            shorter = rows[short].assign(_epochs=epochs[short], _budget=budget[short])
            groups = shorter.groupby(keys, dropna=False, sort=True) if keys else [((), shorter)]
            for group_key, grp in groups:
                values = group_key if isinstance(group_key, tuple) else (group_key,)
                ran = ", ".join(
                    "unknown" if math.isnan(e) else str(int(e))
                    for e in sorted(grp["_epochs"].unique(), key=lambda e: (math.isnan(e), e))
                )
                notes.append(
                    f"not ranked ({_group_label(keys, values)}): "
                    f"{_plural(_n_trials(grp), 'finished trial')} ran {ran} epochs, "
                    f"not the full budget of {int(grp['_budget'].iloc[0])}"
                )
            rows = rows[~short]
    return rows, notes


def _aggregate(rows: pd.DataFrame, column: str, keys: list[str]) -> pd.DataFrame:
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


def configurations(
    df: pd.DataFrame, metric: str, by: str | Sequence[str] | None = ("task", "model")
) -> pd.DataFrame:
    """One row per configuration: a group, a loss family and one set of ``param.*`` values.

    Rows that differ only by seed (whether from one trial or several) form one configuration.
    Only the rows a ranking compares count (:func:`ranked_rows`: finished, full epoch budget,
    with a value); this function warns about nothing, :func:`rank_losses` does.

    Returns:
        A frame with the grouping keys, ``loss``, the ``param.*`` columns, and ``mean``,
        ``std`` (sample std, ddof=1; NaN for one seed), ``n`` (seeds), ``values`` (the seeds'
        ``best.<metric>`` values, a list of floats).
    """
    keys = _keys(by)
    missing = [k for k in [*keys, "loss"] if k not in df.columns]
    if missing:
        raise LossearchError(f"trials frame has no column(s): {', '.join(missing)}")
    rows, _ = ranked_rows(df, metric, keys)
    return _aggregate(rows, metric_column(df, metric), keys)


def welch_interval(
    a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """Welch's t interval for ``mean(a) - mean(b)`` (unequal variances).

    ``d ± t_{(1+confidence)/2, ν} · se`` with ``se² = s_a²/n_a + s_b²/n_b`` (sample variances,
    ddof=1) and the Welch–Satterthwaite degrees of freedom
    ``ν = se⁴ / ((s_a²/n_a)²/(n_a−1) + (s_b²/n_b)²/(n_b−1))``. The same interval as
    ``scipy.stats.ttest_ind(a, b, equal_var=False).confidence_interval(confidence)``. Needs at
    least two values on each side, else ``(nan, nan)``; when both sides have zero variance
    the interval is the point ``(d, d)`` (its limit, since ν stays ≥ 1).
    """
    a_, b_ = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a_) < 2 or len(b_) < 2:
        return math.nan, math.nan
    diff = float(a_.mean() - b_.mean())
    va, vb = a_.var(ddof=1) / len(a_), b_.var(ddof=1) / len(b_)
    se2 = float(va + vb)
    if se2 == 0:
        return diff, diff
    dof = se2**2 / (va**2 / (len(a_) - 1) + vb**2 / (len(b_) - 1))
    from scipy import stats  # here: SciPy takes ~1 s to import, and most rankings need none

    half = float(stats.t.ppf(0.5 + confidence / 2, dof)) * math.sqrt(se2)
    return diff - half, diff + half


def _welch(a: Sequence[float], b: Sequence[float], alternative: str) -> float:
    if len(a) < 2 or len(b) < 2:
        return math.nan
    from scipy import stats

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
    :func:`configurations`). Only ``finished`` trials that ran the group's full epoch budget
    count (:func:`ranked_rows`); each kind of row left out (pruned, errored, running, an
    unknown status, fewer epochs, no value) is named in a :class:`RankingWarning`, and the
    same notes are in ``result.attrs["notes"]``.

    Against CE's best configuration, over seeds: ``delta_vs_ce = mean - ce_mean`` (metric
    units, not sign-flipped: positive is better for mode max, negative for mode min) with its
    95% Welch t interval ``[delta_ci_low, delta_ci_high]`` (:func:`welch_interval`), and
    ``p_value`` from Welch's t-test (``scipy.stats.ttest_ind`` with ``equal_var=False``),
    two-sided by default; ``alternative="better"`` makes the test one-sided in favour of the
    family (``greater`` for mode max, ``less`` for min). Interval and test need at least two
    seeds on each side; otherwise both are NaN. For CE itself the delta and its interval are
    0 and p is NaN (as in :func:`analysis.verdict.verdict`); without CE in the group all four
    are NaN.

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
        mean in the group; ties share the lowest rank, "min" method); ``delta_vs_ce``,
        ``delta_ci_low``, ``delta_ci_high``; ``p_value``.

    Raises:
        LossearchError: unknown metric or mode, a missing column, or a ``status`` column
            with none of the statuses :func:`analysis.load.load_trials` writes.
    """
    check_mode(mode)
    if alternative not in ("two-sided", "better"):
        raise LossearchError(f"alternative must be 'two-sided' or 'better', got '{alternative}'")
    scipy_alternative = (
        "two-sided" if alternative == "two-sided" else ("greater" if mode == "max" else "less")
    )
    keys = _keys(by)
    missing = [k for k in [*keys, "loss"] if k not in df.columns]
    if missing:
        raise LossearchError(f"trials frame has no column(s): {', '.join(missing)}")
    rows, notes = ranked_rows(df, metric, keys)
    for note in notes:
        warnings.warn(note, RankingWarning, stacklevel=2)
    configs = _aggregate(rows, metric_column(df, metric), keys)
    if configs.empty:
        out = pd.DataFrame(columns=[*keys, *RANK_COLUMNS])
        out.attrs["notes"] = notes
        return out
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
        has_ce = len(baseline) > 0
        ce_mean = float(baseline["mean"].iloc[0]) if has_ce else math.nan
        ce_values = baseline["values"].iloc[0] if has_ce else []
        ranks = fam["mean"].rank(method="min", ascending=ascending).astype(int)
        for (_, row), rank in zip(fam.iterrows(), ranks, strict=True):
            values = row["values"]
            best = max(values) if mode == "max" else min(values)
            is_ce = row["loss"] == BASELINE
            if is_ce:
                delta = low = high = 0.0
                p = math.nan
            elif not has_ce:
                delta = low = high = p = math.nan
            else:
                delta = float(row["mean"]) - ce_mean
                low, high = welch_interval(values, ce_values)
                p = _welch(values, ce_values, scipy_alternative)
            records.append(
                {
                    **dict(zip(keys, group_values, strict=True)),
                    "loss": row["loss"],
                    "best": float(best),
                    "mean": float(row["mean"]),
                    "std": float(row["std"]),
                    "n": int(row["n"]),
                    "rank": int(rank),
                    "delta_vs_ce": delta,
                    "delta_ci_low": low,
                    "delta_ci_high": high,
                    "p_value": p,
                }
            )
    out = pd.DataFrame.from_records(records, columns=[*keys, *RANK_COLUMNS])
    out = out.sort_values([*keys, "rank", "loss"], kind="stable").reset_index(drop=True)
    out["n"] = out["n"].astype("int64")
    out["rank"] = out["rank"].astype("int64")
    out.attrs["notes"] = notes
    return out


def best_configurations(
    df: pd.DataFrame,
    metric: str = "exact_match",
    by: str | Sequence[str] | None = ("task", "model"),
    mode: str = "max",
) -> pd.DataFrame:
    """The best configuration of each group and family (the one :func:`rank_losses` ranks).

    Same rows as the ranking (:func:`ranked_rows`), without its warnings.

    Returns:
        The :func:`configurations` columns (grouping keys, ``loss``, ``param.*``, ``mean``,
        ``std``, ``n``, ``values``) for one configuration per group and family, best first.
    """
    check_mode(mode)
    keys = _keys(by)
    configs = configurations(df, metric, keys)
    configs = configs.sort_values("mean", ascending=mode == "min", kind="stable")
    return configs.groupby([*keys, "loss"], dropna=False, sort=False).head(1).reset_index(drop=True)
