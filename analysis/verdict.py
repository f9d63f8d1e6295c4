"""The verdict of the confirm stage: does a loss family beat CE on the held-out test set?

Input is a confirmed frame from :func:`analysis.confirmed.load_confirmed` (one row per
configuration and seed, with the path of each seed's per-question predictions). Per group
(task, model) and loss family, one configuration is judged: the one chosen by *validation*,
never by test. Its per-question correctness over seeds, a matrix ``X[s, q]`` (seed s,
question q), gives the mean, a bootstrap interval, and paired comparisons with the CE
baseline and with the answer-only CE control on the same questions.
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
#: Largest number of non-zero paired differences whose 2**n sign flips are enumerated.
EXACT_MAX = 16
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


def paired_ci(
    diff: np.ndarray, rng: np.random.Generator, n_boot: int = 10_000, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``mean(d)``, resampling questions with replacement.

    ``d[q]`` is a per-question paired difference (here: the family's correctness on q averaged
    over its seeds minus the baseline's averaged over its seeds). Each draw takes Q question
    indices uniformly with replacement and the mean of ``d`` over them.
    """
    d = np.asarray(diff, dtype=float)
    n = d.size
    draws = [d[rng.integers(0, n, size=(size, n))].mean(axis=1) for size in _chunks(n_boot, n)]
    return _interval(np.concatenate(draws), alpha)


def sign_flip_test(
    diff: np.ndarray, rng: np.random.Generator, n_boot: int = 10_000, exact_max: int = EXACT_MAX
) -> float:
    """Two-sided paired sign-flip permutation test of ``H0: d[q]`` symmetric about 0.

    The statistic is ``T = sum_q d[q]`` (equivalently the mean). Under H0 each difference's
    sign is exchangeable, so ``T* = sum_q e_q d[q]`` with ``e_q`` in ``{-1, +1}``. Zero
    differences do not change T* and are dropped; with none left, p = 1.

    * n ≤ ``exact_max`` non-zero differences: all ``2**n`` sign vectors are enumerated and
      ``p = #{|T*| >= |T|} / 2**n`` (exact; the identity flip is one of them, so p ≥ 2**-n).
    * otherwise Monte Carlo with ``n_boot`` uniform random sign vectors:
      ``p = (1 + #{|T*| >= |T|}) / (1 + n_boot)``.

    ``>=`` allows a relative tolerance of 1e-9 for floating-point sums.
    """
    d = np.asarray(diff, dtype=float)
    nz = d[d != 0]
    n = nz.size
    if n == 0:
        return 1.0
    observed = abs(float(nz.sum()))
    threshold = observed - 1e-9 * max(1.0, float(np.abs(nz).sum()))
    if n <= exact_max:
        bits = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
        stats = np.abs((1 - 2 * bits) @ nz)
        return float(np.count_nonzero(stats >= threshold)) / 2**n
    hits = 0
    for size in _chunks(n_boot, n):
        signs = 1 - 2 * rng.integers(0, 2, size=(size, n))
        hits += int(np.count_nonzero(np.abs(signs @ nz) >= threshold))
    return (1 + hits) / (1 + n_boot)


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

    Test values are never looked at. Configurations without a validation value come last;
    ties go to the better search rank, then the smaller config id.
    """
    keys = [k for k in ("experiment", "run_id") if k in rows.columns]
    configs = rows.groupby(keys, sort=False, dropna=False)
    if configs.ngroups == 1:
        return rows
    column = f"val.{metric}"
    summary = configs.agg(
        rank=("rank", "min"),
        config_id=("config_id", "first"),
        **({"val": (column, "mean")} if column in rows.columns else {}),
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
    name: str,
    other: str,
    group: tuple[Any, ...],
    x: np.ndarray,
    x_refs: list[str] | None,
    y: np.ndarray,
    y_refs: list[str] | None,
) -> np.ndarray:
    """Per-question paired differences ``mean_s x[s, q] - mean_s y[s, q]``."""
    where = "/".join(str(v) for v in group)
    if x.shape[1] != y.shape[1]:
        raise LossearchError(
            f"{where}: cannot pair {name} with {other}: {x.shape[1]} vs {y.shape[1]} test questions"
        )
    if x_refs is not None and y_refs is not None and x_refs != y_refs:
        raise LossearchError(
            f"{where}: cannot pair {name} with {other}: their test references differ"
        )
    return x.mean(axis=0) - y.mean(axis=0)


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
    * ``delta_vs_ce``: ``mean(d)`` with ``d[q] = mean_s X[s, q] - mean_s X_ce[s, q]``, the
      paired difference on the same questions (= mean - CE's mean);
      ``delta_ci_low``/``delta_ci_high``: percentile bootstrap over questions
      (:func:`paired_ci`).
    * ``p_value``: two-sided sign-flip permutation test of ``d`` (:func:`sign_flip_test`):
      exact over all 2**n sign vectors when at most 16 differences are non-zero, else
      ``(1 + #{|T*| >= |T|}) / (1 + n_boot)`` over ``n_boot`` random sign vectors; 1 when all
      differences are zero.
    * ``p_holm``: Holm–Bonferroni adjustment of ``p_value`` over the non-baseline families of
      the group (:func:`holm`).
    * ``delta_vs_control``, ``delta_vs_control_ci_low``/``_ci_high``, ``p_vs_control``: the
      same paired comparison with the ``control`` family (answer-only CE), unadjusted; NaN for
      the control itself and where no control was confirmed.

    The baseline row has ``delta_vs_ce`` 0 (interval [0, 0]) and ``p_value``/``p_holm`` NaN;
    a group without the baseline has NaN deltas and p-values. Every random draw comes from a
    :class:`numpy.random.Generator` seeded with ``(seed, hash of group and family, use)``,
    so the table is reproducible and a family's numbers do not change when others are added.

    Args:
        df: a confirmed frame (:func:`analysis.confirmed.load_confirmed`).
        metric: the per-question key of the predictions files (and ``val.<metric>``).
        baseline: the family every other is compared with.
        control: the control family (None: no control columns, all NaN).
        n_boot: bootstrap draws, and random sign vectors of the Monte Carlo test.
        alpha: 1 - the intervals' level (0.05: 95%).
        seed: seeds every generator.
        mode: ``"max"`` if higher ``metric`` is better, ``"min"`` otherwise.

    Raises:
        LossearchError: missing columns; a family whose questions (count or references) differ
            from the baseline's or the control's; unreadable predictions files.

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
            judged[str(loss)] = {"rows": chosen, "x": x, "refs": refs}

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
                (_CE_NAMES, base, baseline, 1, False),
                (_CONTROL_NAMES, ctrl, control, 3, loss == control),
            )
            for names, other, other_name, stream, skip in comparisons:
                if other is None or skip:
                    values = (math.nan, math.nan, math.nan, math.nan)
                elif loss == other_name:
                    values = (0.0, 0.0, 0.0, math.nan)
                else:
                    d = _compare(loss, str(other_name), group, x, refs, other["x"], other["refs"])
                    lo, hi = paired_ci(d, _rng(seed, group, loss, stream), n_boot, alpha)
                    p = sign_flip_test(d, _rng(seed, group, loss, stream + 1), n_boot)
                    values = (float(d.mean()), lo, hi, p)
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
