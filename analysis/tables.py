"""What the CLI prints of an analysis: the ranking and expected-max tables, JSON, markdown.

Imports no SciPy or matplotlib (:mod:`analysis.report` does, for the analysis itself:
~1.1 s here), so the end of ``lossearch search`` prints its ranking without them (SciPy
loads only where the ranking computes intervals: several seeds).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from analysis.expected_max import summarize_expected_max
from analysis.rank import BASELINE, CONFIDENCE, RANK_COLUMNS

DEFAULT_METRIC = "exact_match"


def _cell(value: Any, floatfmt: str) -> str:
    if value is None or value is pd.NA:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else format(value, floatfmt)
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".4g") -> str:
    """A GitHub-flavoured markdown table of ``frame`` (no index); NaN/None become empty cells.

    Numbers are right-aligned, floats formatted with ``floatfmt``; ``|`` in text is escaped.
    """
    columns = [str(c) for c in frame.columns]
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) for c in frame.columns]
    lines = [
        "| " + " | ".join(c.replace("|", "\\|") for c in columns) + " |",
        "|" + "|".join("---:" if num else "---" for num in numeric) + "|",
    ]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v, floatfmt) for v in row) + " |")
    return "\n".join(lines) + "\n"


def seeds_phrase(rankings: pd.DataFrame) -> str:
    """``"2 seeds"``, ``"1 seed"`` or ``"1-3 seeds"`` from the ``n`` column of a ranking."""
    if rankings.empty or "n" not in rankings.columns:
        return "no finished trials"
    low, high = int(rankings["n"].min()), int(rankings["n"].max())
    if low == high:
        return "1 seed" if low == 1 else f"{low} seeds"
    return f"{low}-{high} seeds"


def ranking_title(rankings: pd.DataFrame, metric: str, mode: str | None = None) -> str:
    """The ranking's title: metric, direction, split and seeds, e.g.
    ``Loss families ranked by exact_match (max; validation, 2 seeds)``."""
    where = f"validation, {seeds_phrase(rankings)}"
    return f"Loss families ranked by {metric} ({f'{mode}; ' if mode else ''}{where})"


def format_ranking_delta(row: Mapping[str, Any], precision: int = 4) -> str:
    """A ranking row's difference to CE with its 95% interval, never a bare number.

    ``"+0.0520 [+0.0100, +0.0940]"``; ``"baseline"`` for CE's row; ``"n/a (1 seed)"`` where
    the interval is NaN because one side has a single seed; ``""`` where the group has no CE.
    """
    delta, low, high = row["delta_vs_ce"], row["delta_ci_low"], row["delta_ci_high"]
    if row.get("loss") == BASELINE:
        return "baseline"
    if delta is None or math.isnan(delta):
        return ""
    if math.isnan(low) or math.isnan(high):
        return "n/a (1 seed)"
    return f"{delta:+.{precision}f} [{low:+.{precision}f}, {high:+.{precision}f}]"


def rankings_table(
    rankings: pd.DataFrame, metric: str = DEFAULT_METRIC, mode: str | None = None
) -> Any:
    """A :class:`rich.table.Table` of :func:`analysis.rank.rank_losses` output (for printing).

    The title names the metric, ``mode`` (when given), the split (validation) and the seeds;
    the difference to CE is shown only with its 95% interval (:func:`format_ranking_delta`); the
    ranking's notes (``rankings.attrs["notes"]``: what it left out) are the caption.
    """
    from rich.table import Table

    notes = rankings.attrs.get("notes") or []
    table = Table(
        title=ranking_title(rankings, metric, mode),
        caption="\n".join(notes) or None,
        caption_justify="left",
    )
    keys = [c for c in rankings.columns if c not in RANK_COLUMNS]
    for key in keys:
        table.add_column(key)
    table.add_column("rank", justify="right")
    table.add_column("loss")
    table.add_column("best", justify="right")
    table.add_column("mean", justify="right")
    table.add_column("std", justify="right")
    table.add_column("n", justify="right")
    table.add_column(f"vs CE [{CONFIDENCE:.0%} CI]", justify="right")
    table.add_column("p", justify="right")
    for row in rankings.itertuples(index=False):
        r = row._asdict()
        p = r["p_value"]
        table.add_row(
            *[_cell(r[k], ".4g") for k in keys],
            str(r["rank"]),
            str(r["loss"]),
            f"{r['best']:.4f}",
            f"{r['mean']:.4f}",
            "" if math.isnan(r["std"]) else f"{r['std']:.4f}",
            str(r["n"]),
            format_ranking_delta(r),
            "" if math.isnan(p) else f"{p:.3g}",
        )
    return table


def expected_max_table(frame: pd.DataFrame, metric: str = DEFAULT_METRIC) -> Any:
    """A :class:`rich.table.Table` of :func:`analysis.expected_max.expected_max` output.

    One row per group (task, model, family) with its number of trials and the expected best
    value after k trials for k = 1 (the mean trial), the powers of two below the largest n,
    and k = n (:func:`analysis.expected_max.summarize_expected_max`).
    """
    from rich.table import Table

    summary = summarize_expected_max(frame)
    table = Table(title=f"Expected best validation {metric} after k trials (Dodge et al. 2019)")
    for column in summary.columns:
        numeric = column == "n_trials" or column.startswith("k=")
        table.add_column(column, justify="right" if numeric else "left")
    for row in summary.itertuples(index=False):
        table.add_row(*[_cell(v, ".4f") for v in row])
    return table


def rankings_json(rankings: pd.DataFrame) -> str:
    """The rankings as a JSON list of objects, one per row; NaN becomes ``null``."""
    return json.dumps(json.loads(rankings.to_json(orient="records", double_precision=15)), indent=2)
