"""What ``lossearch confirm`` prints and writes at the end: the test-split verdict table."""

from __future__ import annotations

import math
from typing import Any

from lossearch.storage import join_uri, write_text

VERDICT_FILE = "verdict.csv"


def _p(value: Any) -> str:
    if not (isinstance(value, float) and math.isfinite(value)):
        return "-"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _fmt(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) and math.isfinite(value) else "-"


def finish_confirm(exp: str, metric: str, mode: str = "max") -> Any:
    """Compute the verdict of ``exp``'s confirm, write ``EXP/confirm/verdict.csv``, print it.
    ``mode``: the direction in which ``metric`` is better (the confirm plan's).

    Returns the verdict frame (see :func:`analysis.verdict`).
    """
    from rich.console import Console
    from rich.table import Table

    from analysis import format_delta, load_confirmed, verdict
    from analysis.verdict import BASELINE, CONTROL

    table = verdict(load_confirmed([exp]), metric, mode=mode)
    write_text(join_uri(exp, "confirm"), VERDICT_FILE, table.to_csv(index=False))
    path = join_uri(exp, "confirm", VERDICT_FILE)
    # intervals make wide rows: keep them on one line when the output is a pipe or a log
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)
    for (task, model), group in table.groupby(["task", "model"], sort=False):
        n_seeds = int(group["n_seeds"].max())
        fewest = int(group["n_seeds"].min())
        n_questions = int(group["n_questions"].max())
        seeds = f"{n_seeds} seeds" if fewest == n_seeds else f"{fewest}-{n_seeds} seeds"
        out = Table(
            title=f"{task} / {model}: {metric} on the test split "
            f"({n_questions} questions, {seeds}, 95% intervals)"
        )
        for col in ("rank", "loss", "mean [95% CI]", "vs ce", "p (Holm)", "vs answer_ce"):
            out.add_column(col, justify="left" if col == "loss" else "right")
        for _, row in group.iterrows():
            out.add_row(
                str(int(row["rank"])),
                str(row["loss"])
                + (f" ({int(row['n_seeds'])} seed{'s' * (row['n_seeds'] != 1)})"
                   if int(row["n_seeds"]) != n_seeds else "")
                + (" (lr at edge)" if bool(row["lr_edge"]) else ""),
                f"{_fmt(row['mean'])} [{_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}]",
                "baseline" if row["loss"] == BASELINE else format_delta(row),
                _p(row["p_holm"]),
                "control" if row["loss"] == CONTROL else format_delta(row, against="control"),
            )
        console.print(out)
    if table["lr_edge"].astype(bool).any():
        console.print(
            "note: a family marked 'lr at edge' had its best learning rate at an end of the "
            "searched range; widen the range before trusting its number"
        )
    console.print(f"verdict: {path}", soft_wrap=True)
    return table

