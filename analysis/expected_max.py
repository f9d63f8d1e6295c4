"""How good a result to expect from k trials: the expected-maximum curve (Dodge et al., 2019).

"Show Your Work: Improved Reporting of Experimental Results" (EMNLP 2019) reports, for a
budget of k hyperparameter trials, the expected best validation score. A family that only
wins after 50 trials is a different claim from one that wins after 5.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis.rank import RankingWarning, metric_column, ranked_rows
from lossearch.errors import LossearchError
from lossearch.experiment import check_mode

GROUP = ("task", "model", "loss")
CURVE_COLUMNS = ["k", "expected_max", "n_trials"]


def expected_max_curve(
    values: Sequence[float], ks: Sequence[int] | None = None, mode: str = "max"
) -> np.ndarray:
    """Expected best of k draws with replacement from ``values``, for each k in ``ks``.

    With the n values sorted ``v_(1) ≤ … ≤ v_(n)``, the maximum of k draws (with
    replacement, each value with probability 1/n) is at most ``v_(i)`` with probability
    ``(i/n)^k``, so

        E[max of k] = Σ_i v_(i) · ((i/n)^k − ((i−1)/n)^k)

    and, mirrored, for ``mode="min"``

        E[min of k] = Σ_i v_(i) · (((n−i+1)/n)^k − ((n−i)/n)^k).

    This is exact for the empirical distribution of the observed values: no resampling, so no
    bootstrap noise. Ties need no care (tied values' weights add up to the probability that
    the best equals that value). At k = 1 it is the mean; it is non-decreasing in k for max
    (non-increasing for min) and tends to the max (min) as k → ∞, but at k = n it is still
    below it, since n draws with replacement miss the best value with probability
    ``(1 − 1/n)^n ≈ 1/e``.

    Args:
        values: the n ≥ 1 observed values (NaN is an error).
        ks: budgets (integers ≥ 1); default ``1..n``.
        mode: ``"max"`` or ``"min"``.

    Returns:
        An array of ``len(ks)`` expected values.
    """
    check_mode(mode)
    v = np.sort(np.asarray(values, dtype=float))
    n = len(v)
    if n == 0:
        raise LossearchError("expected maximum of no values")
    if np.isnan(v).any():
        raise LossearchError("expected maximum of NaN values")
    k = np.arange(1, n + 1) if ks is None else np.asarray(ks, dtype=float)
    if (k < 1).any():
        raise LossearchError("the number of trials k must be at least 1")
    i = np.arange(1, n + 1, dtype=float)
    kk = k[:, None]
    if mode == "max":
        weights = (i / n) ** kk - ((i - 1) / n) ** kk
    else:
        weights = ((n - i + 1) / n) ** kk - ((n - i) / n) ** kk
    return weights @ v


def trial_values(
    df: pd.DataFrame, metric: str = "exact_match", by: str | Sequence[str] = GROUP
) -> tuple[pd.DataFrame, list[str]]:
    """One value per trial: the mean over its seeds of the column rankings use.

    Rows are those a ranking compares (:func:`analysis.rank.ranked_rows`: finished trials at
    the full epoch budget of their task/model group, i.e. of ``by`` without ``loss``), so a
    family's curve and its rank rest on the same trials. A trial is one
    (``experiment``, ``trial_id``).

    Returns:
        The frame (``by`` keys, ``experiment`` where present, ``trial_id``, ``value``) and the
        notes on left-out rows.
    """
    keys = [by] if isinstance(by, str) else list(by)
    if "trial_id" not in df.columns:
        raise LossearchError("trials frame has no column 'trial_id'")
    missing = [k for k in keys if k not in df.columns]
    if missing:
        raise LossearchError(f"trials frame has no column(s): {', '.join(missing)}")
    column = metric_column(df, metric)
    budget_keys = [k for k in keys if k != "loss"]
    rows, notes = ranked_rows(df, metric, budget_keys)
    ids = [c for c in ("experiment", "trial_id") if c in rows.columns]
    values = (
        rows.groupby([*keys, *ids], dropna=False, sort=True)[column]
        .mean()
        .rename("value")
        .reset_index()
    )
    return values, notes


def expected_max(
    df: pd.DataFrame,
    metric: str = "exact_match",
    by: str | Sequence[str] = GROUP,
    mode: str = "max",
) -> pd.DataFrame:
    """The expected-maximum curve of each group: expected best value after k = 1..n trials.

    Per group (default task, model, loss family) with n finished trials, each trial valued
    by its seed mean of ``best.<metric>`` (:func:`trial_values`), the curve is
    :func:`expected_max_curve` of those n values at k = 1..n:
    ``E[max of k] = Σ_i v_(i) · ((i/n)^k − ((i−1)/n)^k)`` over the sorted values (the mirrored
    formula, an expected minimum, for ``mode="min"``); exact, no resampling noise. Left-out
    rows are named in a :class:`~analysis.rank.RankingWarning`, as :func:`rank_losses` does.

    Returns:
        The grouping keys, ``k``, ``expected_max`` (the expected best, a minimum for mode
        min), ``n_trials`` (n of the group); sorted by group then k. Empty (same columns)
        when no trial counts.
    """
    check_mode(mode)
    keys = [by] if isinstance(by, str) else list(by)
    values, notes = trial_values(df, metric, keys)
    for note in notes:
        warnings.warn(note, RankingWarning, stacklevel=2)
    frames = []
    groups = values.groupby(keys, dropna=False, sort=True) if keys else [((), values)]
    for group_key, grp in groups:
        group_values = group_key if isinstance(group_key, tuple) else (group_key,)
        n = len(grp)
        curve = expected_max_curve(grp["value"].to_numpy(), mode=mode)
        frame = pd.DataFrame({"k": np.arange(1, n + 1), "expected_max": curve, "n_trials": n})
        for key, value in zip(keys, group_values, strict=True):
            frame[key] = value
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=[*keys, *CURVE_COLUMNS])
    out = pd.concat(frames, ignore_index=True)[[*keys, *CURVE_COLUMNS]]
    out["k"] = out["k"].astype("int64")
    out["n_trials"] = out["n_trials"].astype("int64")
    return out


def summarize_expected_max(curves: pd.DataFrame, ks: Sequence[int] | None = None) -> pd.DataFrame:
    """A wide view of :func:`expected_max` output: one row per group, one column per budget.

    Columns: the grouping keys, ``n_trials``, ``k=<k>`` for each k in ``ks`` (default 1, the
    mean trial, and the powers of two below the largest n) — empty (NaN) where a group has
    fewer trials — and ``k=n``, the group's value at its own n.
    """
    keys = [c for c in curves.columns if c not in CURVE_COLUMNS]
    if curves.empty:
        return pd.DataFrame(columns=[*keys, "n_trials", "k=n"])
    largest = int(curves["n_trials"].max())
    if ks is None:
        ks = [1, *(2**j for j in range(1, int(math.log2(largest)) + 1) if 2**j < largest)]
    records = []
    groups = curves.groupby(keys, dropna=False, sort=True) if keys else [((), curves)]
    for group_key, grp in groups:
        group_values = group_key if isinstance(group_key, tuple) else (group_key,)
        at = grp.set_index("k")["expected_max"]
        n = int(grp["n_trials"].iloc[0])
        record = {**dict(zip(keys, group_values, strict=True)), "n_trials": n}
        for k in ks:
            record[f"k={k}"] = float(at[k]) if k in at.index else math.nan
        record["k=n"] = float(at[n])
        records.append(record)
    return pd.DataFrame.from_records(records)
