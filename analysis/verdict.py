"""The verdict of the confirm stage: does a loss family beat CE on the held-out test set?

Input is a confirmed frame from :func:`analysis.confirmed.load_confirmed` (one row per
configuration and seed, with the path of each seed's per-question predictions). Per group
(task, model) and loss family, one configuration is judged: the one chosen by *validation*,
never by test. Its per-question correctness over seeds, a matrix ``X[s, q]`` (seed s,
question q), gives the mean, a bootstrap interval, and paired comparisons with the CE
baseline and with the answer-only CE control on the same questions and seeds, whose
intervals and tests count the seeds' variance as well as the questions'.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.confirmed import _read_matrix
from lossearch.errors import LossearchError
from lossearch.experiment import check_mode

BASELINE = "ce"
CONTROL = "answer_ce"
GROUP_KEYS = ["task", "model"]
#: The columns of :func:`verdict`, in this order.
VERDICT_COLUMNS = [
    "task",
    "model",
    "rank",
    "loss",
    "config_id",
    "split",
    "n_seeds",
    "n_questions",
    "mean",
    "ci_low",
    "ci_high",
    "delta_vs_ce",
    "delta_ci_low",
    "delta_ci_high",
    "p_value",
    "p_holm",
    "delta_vs_control",
    "delta_vs_control_ci_low",
    "delta_vs_control_ci_high",
    "p_vs_control",
    "lr_edge",
]
# Elements of one bootstrap chunk (draws x questions): ~16 MB of float64.
_CHUNK_ELEMENTS = 2_000_000
_CE_NAMES = ("delta_vs_ce", "delta_ci_low", "delta_ci_high", "p_value")
_CONTROL_NAMES = (
    "delta_vs_control",
    "delta_vs_control_ci_low",
    "delta_vs_control_ci_high",
    "p_vs_control",
)
_REQUIRED = ["task", "model", "loss", "config_id", "run_id", "rank", "seed", "predictions"]


def _chunks(n_draws: int, width: int) -> list[int]:
    size = max(1, _CHUNK_ELEMENTS // max(width, 1))
    return [min(size, n_draws - start) for start in range(0, n_draws, size)]


def _interval(draws: np.ndarray, alpha: float) -> tuple[float, float]:
    low, high = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def bootstrap_ci(
    matrix: np.ndarray, rng: np.random.Generator, n_boot: int = 10_000, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``matrix[s, q]``, seeds and questions jointly.

    Each draw b resamples S seed indices ``i_1..i_S`` and Q question indices ``j_1..j_Q``
    uniformly with replacement (independently) and takes the mean of the sub-matrix,
    ``m_b = (1/(S Q)) sum_a sum_c X[i_a, j_c]``; the interval is the ``alpha/2`` and
    ``1 - alpha/2`` quantiles of ``m_1..m_B``. Vectorised in chunks of draws: the resampled
    seeds become a weight row ``w_b`` (counts / S), ``w_b @ X`` is the seed-averaged
    correctness of every question, and the question indices pick from it.

    Resampling both ways counts the seed-by-question noise twice, so the interval errs wide:
    simulated coverage of a nominal 95 % was 0.96-1.0 (3-5 seeds, 150 questions; widest,
    about 1.5x, when seeds and questions add little beyond coin-flip noise).
    """
    x = np.asarray(matrix, dtype=float)
    n_seeds, n_questions = x.shape
    draws = []
    for size in _chunks(n_boot, n_questions):
        seeds = rng.integers(0, n_seeds, size=(size, n_seeds))
        offsets = (seeds + n_seeds * np.arange(size)[:, None]).ravel()
        weights = np.bincount(offsets, minlength=size * n_seeds).reshape(size, n_seeds) / n_seeds
        per_question = weights @ x  # [size, Q]
        questions = rng.integers(0, n_questions, size=(size, n_questions))
        draws.append(np.take_along_axis(per_question, questions, axis=1).mean(axis=1))
    return _interval(np.concatenate(draws), alpha)


def crossed_mean_variance(table: np.ndarray) -> tuple[float, float]:
    """Variance of the grand mean of a crossed ``S x Q`` table (seeds x questions, one value
    per cell), and its Satterthwaite degrees of freedom.

    With ``D[s, q] = mu + b_s + a_q + e_sq`` (seed, question, residual), the mean's variance
    is ``var(b)/S + var(a)/Q + var(e)/(S Q)``. From the two-way ANOVA mean squares ``MS_S``
    (seeds, S-1 df), ``MS_Q`` (questions, Q-1 df) and ``MS_E`` ((S-1)(Q-1) df) its unbiased
    estimate is ``(MS_S + MS_Q - MS_E) / (S Q)``, floored at ``MS_Q / (S Q)`` (the questions'
    part alone: a negative estimate of the seeds' part does not narrow it), with
    ``df = V^2 / sum_i (c_i MS_i)^2 / df_i`` (V the floored sum ``sum_i c_i MS_i``). One
    seed: ``var(D[0, :]) / Q`` with Q-1 df. Fewer than 2 questions: NaN.
    """
    d = np.asarray(table, dtype=float)
    n_seeds, n_questions = d.shape
    if n_questions < 2:
        return math.nan, math.nan
    mean, by_seed, by_question = d.mean(), d.mean(axis=1), d.mean(axis=0)
    ms_q = n_seeds * float(((by_question - mean) ** 2).sum()) / (n_questions - 1)
    terms = [(ms_q, n_questions - 1)]
    if n_seeds > 1:
        ms_s = n_questions * float(((by_seed - mean) ** 2).sum()) / (n_seeds - 1)
        residual = d - by_seed[:, None] - by_question[None, :] + mean
        df_e = (n_seeds - 1) * (n_questions - 1)
        terms += [(ms_s, n_seeds - 1), (-float((residual**2).sum()) / df_e, df_e)]
    total = max(sum(term for term, _ in terms), ms_q)
    if total <= 0:
        return 0.0, math.inf
    # the df of every term, also when the floor holds: the seeds' part is estimated from
    # S - 1 df whether it comes out above or below zero (simulated: 5 % level held)
    df = total**2 / sum(term**2 / dof for term, dof in terms)
    return total / (n_seeds * n_questions), float(df)


def paired_t(
    x: np.ndarray, y: np.ndarray, alpha: float = 0.05, *, same_seeds: bool = True
) -> tuple[float, float, float]:
    """Interval and two-sided p-value of ``delta = mean(X) - mean(Y)``, two families' scores
    ``X[s, q]``, ``Y[s', q]`` on the same Q test questions, with the seed-to-seed variance
    counted as well as the questions'.

    A family's test score varies from trained seed to trained seed as well as from question
    to question; "this loss beats CE" is a claim about the training, so both are sampling
    variance. An interval over questions alone describes these trained models: with a few
    seeds it calls significant a difference that other seeds would not reproduce.

    * ``same_seeds`` (both trained under the same seed values, which fix the initialisation
      and the data order: row s of X pairs with row s of Y): ``var(delta)`` is
      :func:`crossed_mean_variance` of ``D = X - Y``;
    * otherwise ``var(mean X) + var(mean Y) - 2 cov(xbar_q, ybar_q) / Q`` (the questions are
      shared; ``xbar_q`` = the mean over seeds), floored at ``var(xbar_q - ybar_q) / Q``, with
      the smaller of the two sides' degrees of freedom.

    Returns ``(low, high, p)``: ``delta -+ t_{df, 1-alpha/2} se`` and
    ``p = 2 P(T_df >= |delta| / se)``; with ``se = 0`` the interval is ``[delta, delta]``
    and p is 1 for ``delta = 0``, else 0.
    """
    from scipy import stats  # ~1 s to import: only where a verdict is computed

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"{x.shape[1]} vs {y.shape[1]} questions")
    delta = float(x.mean() - y.mean())
    if same_seeds:
        if x.shape[0] != y.shape[0]:
            raise ValueError("same_seeds needs as many seeds on both sides")
        var, df = crossed_mean_variance(x - y)
    else:
        (var_x, df_x), (var_y, df_y) = crossed_mean_variance(x), crossed_mean_variance(y)
        xq, yq, n = x.mean(axis=0), y.mean(axis=0), x.shape[1]
        shared = float(np.cov(xq, yq)[0, 1]) / n if n > 1 else math.nan
        var = max(var_x + var_y - 2 * shared, float(np.var(xq - yq, ddof=1)) / n)
        df = min(df_x, df_y)
    if not math.isfinite(var):
        return math.nan, math.nan, math.nan
    se = math.sqrt(var)
    if se == 0:
        return delta, delta, 1.0 if delta == 0 else 0.0
    half = float(stats.t.ppf(1 - alpha / 2, df)) * se
    return delta - half, delta + half, min(1.0, float(2 * stats.t.sf(abs(delta) / se, df)))


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (NaN entries are left out of the family and stay NaN).

    With the m p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the adjusted value is
    ``min(1, max_{j <= i} (m - j + 1) p_(j))`` (monotone step-down), returned in input order.
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, math.nan)
    ok = ~np.isnan(p)
    values = p[ok]
    m = values.size
    if m == 0:
        return out
    order = np.argsort(values, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * values[order]))
    result = np.empty(m)
    result[order] = adjusted
    out[ok] = result
    return out


def _rng(seed: int, group: tuple[Any, ...], loss: str, stream: int) -> np.random.Generator:
    """A generator per (group, family, use): results do not depend on which others exist."""
    key = zlib.crc32("\0".join(str(v) for v in (*group, loss)).encode())
    return np.random.default_rng([seed, key, stream])


def _pick_configuration(rows: pd.DataFrame, metric: str, mode: str) -> pd.DataFrame:
    """The rows of the family's judged configuration: best mean validation, else search rank 1.

    Test values are never looked at. Configurations without a validation value for every
    seed come last; ties go to the better search rank, then the smaller config id.
    """
    keys = [k for k in ("experiment", "run_id") if k in rows.columns]
    configs = rows.groupby(keys, sort=False, dropna=False)
    if configs.ngroups == 1:
        return rows
    column = f"val.{metric}"
    summary = configs.agg(
        rank=("rank", "min"),
        config_id=("config_id", "first"),
        # a seed without a validation value makes the mean NaN, not a mean of the others:
        # [0.9, NaN, NaN] is one seed's score, not better than [0.6, 0.6, 0.6]
        **({"val": (column, lambda v: v.mean(skipna=False))} if column in rows.columns else {}),
    ).reset_index()
    if "val" not in summary.columns:
        summary["val"] = math.nan
    summary["key"] = -summary["val"] if mode == "max" else summary["val"]
    summary["rank"] = pd.to_numeric(summary["rank"], errors="coerce")
    best = summary.sort_values(["key", "rank", "config_id"], na_position="last").iloc[0]
    mask = np.ones(len(rows), dtype=bool)
    for k in keys:
        mask &= (rows[k] == best[k]).to_numpy()
    return rows[mask]


def _compare(
    name: str, other: str, group: tuple[Any, ...], mine: dict[str, Any], theirs: dict[str, Any],
    alpha: float,
) -> tuple[float, float, float, float]:
    """``(delta, low, high, p)`` of family ``name`` against ``other`` (:func:`paired_t`), once
    both are known to hold the same test questions: as many, with the same references (the
    only way to tell that question q is the same question on both sides)."""
    x, y = mine["x"], theirs["x"]
    where = "/".join(str(v) for v in group)
    if x.shape[1] != y.shape[1]:
        raise LossearchError(
            f"{where}: cannot pair {name} with {other}: {x.shape[1]} vs {y.shape[1]} test questions"
        )
    if mine["refs"] is None or theirs["refs"] is None:
        raise LossearchError(
            f"{where}: cannot pair {name} with {other}: a predictions file has no 'reference' "
            "to match the questions by"
        )
    if mine["refs"] != theirs["refs"]:
        raise LossearchError(
            f"{where}: cannot pair {name} with {other}: their test references differ"
        )
    low, high, p = paired_t(x, y, alpha, same_seeds=mine["seeds"] == theirs["seeds"])
    return float(x.mean() - y.mean()), low, high, p


def verdict(
    df: pd.DataFrame,
    metric: str = "exact_match",
    *,
    baseline: str = BASELINE,
    control: str | None = CONTROL,
    n_boot: int = 10_000,
    alpha: float = 0.05,
    seed: int = 0,
    mode: str = "max",
) -> pd.DataFrame:
    """Judge each loss family's confirmed configuration on the test set, against CE.

    **Which configuration.** Per group (task, model) and family, the configuration with the
    best mean ``val.<metric>`` over its seeds (``mode`` says whether higher is better); with
    one configuration per family (``top_k: 1``) that is the search's rank-1 configuration.
    Without validation values the search's rank 1 is used. Test values never choose.

    **Statistics.** ``X[s, q]`` is the per-question ``metric`` of seed s on test question q,
    read from each seed's predictions file (:func:`analysis.confirmed.read_correctness`).

    * ``mean``: the mean of X over seeds and questions; ``ci_low``/``ci_high``: percentile
      bootstrap interval at level ``1 - alpha`` resampling seeds and questions jointly
      (:func:`bootstrap_ci`).
    * ``delta_vs_ce``: ``mean(X) - mean(X_ce)``, paired on the same questions (matched by
      their references) and, where both were trained under the same seeds, on the seeds;
      ``delta_ci_low``/``delta_ci_high`` and ``p_value``: the t interval at level
      ``1 - alpha`` and the two-sided t test of a zero difference, whose variance counts the
      seed-to-seed variance as well as the questions' (:func:`paired_t`: two-way ANOVA
      variance components, Satterthwaite degrees of freedom). With 3 seeds and a seed
      variance that dominates, few degrees of freedom remain and the interval is wide: that
      is what 3 seeds can tell.
    * ``p_holm``: Holm–Bonferroni adjustment of ``p_value`` over the non-baseline families of
      the group (:func:`holm`).
    * ``delta_vs_control``, ``delta_vs_control_ci_low``/``_ci_high``, ``p_vs_control``: the
      same paired comparison with the ``control`` family (answer-only CE), unadjusted; NaN for
      the control itself and where no control was confirmed.

    The baseline row has ``delta_vs_ce`` 0 (interval [0, 0]) and ``p_value``/``p_holm`` NaN;
    a group without the baseline has NaN deltas and p-values. The mean's bootstrap draws come
    from a :class:`numpy.random.Generator` seeded with ``(seed, hash of group and family)``,
    so the table is reproducible and a family's numbers do not change when others are added.

    Args:
        df: a confirmed frame (:func:`analysis.confirmed.load_confirmed`).
        metric: the per-question key of the predictions files (and ``val.<metric>``).
        baseline: the family every other is compared with.
        control: the control family (None: no control columns, all NaN).
        n_boot: bootstrap draws of the mean's interval.
        alpha: 1 - the intervals' level (0.05: 95%).
        seed: seeds every generator.
        mode: ``"max"`` if higher ``metric`` is better, ``"min"`` otherwise.

    Raises:
        LossearchError: missing columns; a family whose questions (count or references) differ
            from the baseline's or the control's, or whose files hold no references; a
            non-finite per-question value; unreadable predictions files.

    Returns:
        One row per group and family, sorted by group then ``mean`` (best first), with
        :data:`VERDICT_COLUMNS`: ``task``, ``model``, ``rank`` (1 = best mean in the group,
        ties share the lowest), ``loss``, ``config_id``, ``split`` ("test"), ``n_seeds``,
        ``n_questions``, ``mean``, ``ci_low``, ``ci_high``, ``delta_vs_ce``,
        ``delta_ci_low``, ``delta_ci_high``, ``p_value``, ``p_holm``, ``delta_vs_control``,
        ``delta_vs_control_ci_low``, ``delta_vs_control_ci_high``, ``p_vs_control``,
        ``lr_edge``.
    """
    check_mode(mode)
    if not 0 < alpha < 1:
        raise LossearchError(f"alpha must be between 0 and 1, got {alpha}")
    if n_boot < 1:
        raise LossearchError(f"n_boot must be at least 1, got {n_boot}")
    missing = [c for c in _REQUIRED if c not in df.columns]
    if missing:
        raise LossearchError(f"confirmed frame has no column(s): {', '.join(missing)}")
    if df.empty:
        return pd.DataFrame(columns=VERDICT_COLUMNS)

    records: list[dict[str, Any]] = []
    for group, rows in df.groupby(GROUP_KEYS, dropna=False, sort=True):
        group = group if isinstance(group, tuple) else (group,)
        judged: dict[str, dict[str, Any]] = {}
        for loss, fam in rows.groupby("loss", dropna=False, sort=True):
            chosen = _pick_configuration(fam, metric, mode).sort_values("seed")
            x, refs = _read_matrix([str(p) for p in chosen["predictions"]], metric)
            if x.shape[1] == 0:
                raise LossearchError(f"{'/'.join(map(str, group))}: {loss} has no test questions")
            if not np.isfinite(x).all():
                raise LossearchError(
                    f"{'/'.join(map(str, group))}: {loss}'s predictions hold a {metric} that "
                    "is not a finite number"
                )
            seeds = [int(v) for v in chosen["seed"]]
            judged[str(loss)] = {"rows": chosen, "x": x, "refs": refs, "seeds": seeds}

        base = judged.get(baseline)
        ctrl = judged.get(control) if control is not None else None
        group_records = []
        for loss, item in judged.items():
            x, refs, chosen = item["x"], item["refs"], item["rows"]
            low, high = bootstrap_ci(x, _rng(seed, group, loss, 0), n_boot, alpha)
            record: dict[str, Any] = {
                **dict(zip(GROUP_KEYS, group, strict=True)),
                "loss": loss,
                "config_id": str(chosen["config_id"].iloc[0]),
                "split": "test",
                "n_seeds": int(x.shape[0]),
                "n_questions": int(x.shape[1]),
                "mean": float(x.mean()),
                "ci_low": low,
                "ci_high": high,
                "lr_edge": bool(chosen["lr_edge"].any()) if "lr_edge" in chosen else False,
            }
            comparisons = (
                (_CE_NAMES, base, baseline, False),
                (_CONTROL_NAMES, ctrl, control, loss == control),
            )
            for names, other, other_name, skip in comparisons:
                if other is None or skip:
                    values = (math.nan, math.nan, math.nan, math.nan)
                elif loss == other_name:
                    values = (0.0, 0.0, 0.0, math.nan)
                else:
                    values = _compare(loss, str(other_name), group, item, other, alpha)
                record.update(dict(zip(names, values, strict=True)))
            group_records.append(record)

        adjusted = holm(
            [r["p_value"] if r["loss"] != baseline else math.nan for r in group_records]
        )
        means = pd.Series([r["mean"] for r in group_records], dtype=float)
        ranks = means.rank(method="min", ascending=mode == "min").astype(int)
        for record, p_holm, rank in zip(group_records, adjusted, ranks, strict=True):
            record["p_holm"] = float(p_holm)
            record["rank"] = int(rank)
        records.extend(group_records)

    out = pd.DataFrame.from_records(records, columns=VERDICT_COLUMNS)
    out = out.sort_values(
        [*GROUP_KEYS, "mean", "loss"],
        ascending=[True, True, mode == "min", True],
        kind="stable",
        na_position="last",
    ).reset_index(drop=True)
    for col in ("rank", "n_seeds", "n_questions"):
        out[col] = out[col].astype("int64")
    out["lr_edge"] = out["lr_edge"].astype(bool)
    return out


def write_verdict(table: pd.DataFrame, path: str | PathLike[str]) -> Path:
    """Write a :func:`verdict` table as CSV (parent folders created); returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(target, index=False)
    return target


def format_delta(row: pd.Series | dict[str, Any], against: str = "ce", digits: int = 3) -> str:
    """A verdict row's paired difference and interval, e.g. ``"+0.120 [+0.050, +0.190]"``.

    Args:
        row: a row of :func:`verdict` (Series or dict).
        against: ``"ce"`` (``delta_vs_ce``, ``delta_ci_low``, ``delta_ci_high``) or
            ``"control"`` (``delta_vs_control`` and its interval).
        digits: decimals.

    Returns:
        The formatted string, or ``"n/a"`` where the delta is NaN.
    """
    columns = {
        "ce": ("delta_vs_ce", "delta_ci_low", "delta_ci_high"),
        "control": ("delta_vs_control", "delta_vs_control_ci_low", "delta_vs_control_ci_high"),
    }
    if against not in columns:
        raise LossearchError(f"against must be 'ce' or 'control', got '{against}'")
    delta, low, high = (float(row[c]) for c in columns[against])
    if math.isnan(delta):
        return "n/a"
    return f"{delta:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"
