"""Does the loss that wins on one model (or task) also win on another? Kendall's tau."""

from __future__ import annotations

import itertools
import math
import warnings

import pandas as pd
from scipy import stats

from analysis.rank import rank_losses
from lossearch.errors import LossearchError

AGREEMENT_COLUMNS = ["group_a", "group_b", "tau", "p_value", "n_families"]


def rank_agreement(
    df: pd.DataFrame, metric: str = "exact_match", across: str = "model", mode: str = "max"
) -> pd.DataFrame:
    """Kendall's tau between the loss-family rankings of every pair of ``across`` values.

    Each value of ``across`` (each model, say) ranks the families by the mean of their best
    configuration, exactly as ``rank_losses(df, metric, by=across, mode=mode)`` does (rows
    of other dimensions, e.g. several tasks, are pooled). For each pair of values, tau
    (``scipy.stats.kendalltau``, tau-b, which handles ties) is computed over the families
    present in both. Tau is 1 when the rankings agree, -1 when one is the other reversed;
    NaN with fewer than two shared families or when a ranking is all ties.

    Returns:
        One row per unordered pair (values in sorted order, ``group_a < group_b``) with
        columns ``group_a``, ``group_b`` (the ``across`` values), ``tau``, ``p_value``
        (two-sided), ``n_families`` (families in both).
    """
    if across not in df.columns:
        raise LossearchError(f"trials frame has no column '{across}'")
    ranking = rank_losses(df, metric, by=across, mode=mode)
    records = []
    groups = sorted(ranking[across].dropna().unique(), key=str)
    for a, b in itertools.combinations(groups, 2):
        ra = ranking[ranking[across] == a].set_index("loss")["mean"]
        rb = ranking[ranking[across] == b].set_index("loss")["mean"]
        shared = sorted(set(ra.index) & set(rb.index))
        tau = p = math.nan
        if len(shared) >= 2:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                res = stats.kendalltau(ra[shared].to_numpy(), rb[shared].to_numpy())
            tau, p = float(res.statistic), float(res.pvalue)
        records.append(
            {"group_a": a, "group_b": b, "tau": tau, "p_value": p, "n_families": len(shared)}
        )
    out = pd.DataFrame.from_records(records, columns=AGREEMENT_COLUMNS)
    out["n_families"] = out["n_families"].astype("int64")
    return out
