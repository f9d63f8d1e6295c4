"""PNG figures of a search, drawn with matplotlib's Agg canvas (no display, no pyplot state).

Each function takes a frame and an output path, writes one PNG there (creating the folder)
and returns the path. When a frame has nothing to draw (no rows that count, no learning-rate
column ...) it raises :class:`~lossearch.errors.LossearchError` and writes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from analysis.rank import (
    BASELINE,
    best_configurations,
    counted_rows,
    metric_column,
    ranked_rows,
)
from lossearch.errors import LossearchError

_GROUP = ("task", "model")


def _figure(n_panels: int, width: float = 5.0, height: float = 3.6) -> tuple[Figure, list]:
    cols = min(3, max(1, n_panels))
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n_panels)]
    return fig, axes


def _save(fig: Figure, path: str | PathLike[str]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=110)
    return out


def _label(key: object) -> str:
    parts = key if isinstance(key, tuple) else (key,)
    return " / ".join(
        "-" if p is None or (isinstance(p, float) and math.isnan(p)) else str(p) for p in parts
    )


def _keys(frame: pd.DataFrame, by: Sequence[str]) -> list[str]:
    return [k for k in by if k in frame.columns]


def _families(values: pd.Series) -> dict[str, str]:
    """A stable colour per loss family (CE always the first colour)."""
    names = sorted(values.dropna().unique(), key=lambda n: (n != BASELINE, str(n)))
    return {name: f"C{i % 10}" for i, name in enumerate(names)}


def plot_family_bars(
    rankings: pd.DataFrame,
    path: str | PathLike[str],
    metric: str = "exact_match",
    by: Sequence[str] = _GROUP,
) -> Path:
    """Bar chart per group (task / model) of each family's mean, seed std as error bars.

    ``rankings`` is :func:`analysis.rank.rank_losses` output (grouping keys, ``loss``,
    ``mean``, ``std``, ``rank``). The CE baseline's mean is a dashed horizontal line.
    """
    if rankings.empty:
        raise LossearchError("nothing to plot: no ranked families")
    keys = _keys(rankings, by)
    groups = list(rankings.groupby(keys, dropna=False, sort=True)) if keys else [("all", rankings)]
    colours = _families(rankings["loss"])
    fig, axes = _figure(len(groups))
    for ax, (key, grp) in zip(axes, groups, strict=True):
        grp = grp.sort_values("rank", kind="stable")
        names = [str(n) for n in grp["loss"]]
        ax.bar(
            names,
            grp["mean"],
            yerr=grp["std"].fillna(0.0),
            capsize=4,
            color=[colours[n] for n in grp["loss"]],
        )
        ce = grp[grp["loss"] == BASELINE]
        if len(ce):
            ax.axhline(
                float(ce["mean"].iloc[0]), color="black", linestyle="--", label="CE baseline"
            )
            ax.legend(loc="lower right", fontsize="small")
        ax.set_title(_label(key))
        ax.set_ylabel(f"{metric} (mean over seeds)")
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(f"Best configuration per loss family: {metric}")
    return _save(fig, path)


def _per_trial(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per trial: first values of the descriptive columns, mean/std over seeds."""
    column = metric_column(df, metric)
    rows = counted_rows(df, metric)
    keys = [k for k in ("experiment", "trial_id") if k in rows.columns]
    if not keys or rows.empty:
        raise LossearchError(f"nothing to plot: no finished or pruned trials with '{metric}'")
    other = [
        c
        for c in rows.columns
        if c not in (*keys, column) and not c.startswith(("final.", "best."))
    ]
    grouped = rows.groupby(keys, dropna=False, sort=False)
    table = grouped[other].first()
    table["value"] = grouped[column].mean()
    table["spread"] = grouped[column].std(ddof=1)
    return table.reset_index()


def plot_metric_vs_lr(
    df: pd.DataFrame,
    path: str | PathLike[str],
    metric: str = "exact_match",
    lr_column: str = "param.optim.lr",
) -> Path:
    """``best.<metric>`` against the learning rate (log x), one colour per loss family.

    ``df`` is a trials frame; each point is a trial (mean over its seeds, std as error bar);
    one panel per task / model.
    """
    if lr_column not in df.columns:
        raise LossearchError(f"nothing to plot: the trials have no '{lr_column}'")
    trials = _per_trial(df, metric)
    trials = trials[
        trials[lr_column].notna() & (pd.to_numeric(trials[lr_column], errors="coerce") > 0)
    ]
    if trials.empty:
        raise LossearchError(f"nothing to plot: no positive '{lr_column}' values")
    keys = _keys(trials, _GROUP)
    groups = list(trials.groupby(keys, dropna=False, sort=True)) if keys else [("all", trials)]
    colours = _families(trials["loss"])
    fig, axes = _figure(len(groups))
    for ax, (key, grp) in zip(axes, groups, strict=True):
        for family, fam in grp.groupby("loss", sort=True):
            fam = fam.sort_values(lr_column)
            ax.errorbar(
                fam[lr_column].astype(float),
                fam["value"],
                yerr=fam["spread"].fillna(0.0),
                fmt="o",
                capsize=3,
                color=colours[family],
                label=str(family),
            )
        ax.set_xscale("log")
        ax.set_xlabel(lr_column.removeprefix("param."))
        ax.set_ylabel(f"best {metric}")
        ax.set_title(_label(key))
        ax.legend(fontsize="small")
    return _save(fig, path)


def plot_optimization_history(
    df: pd.DataFrame, path: str | PathLike[str], metric: str = "exact_match", mode: str = "max"
) -> Path:
    """Each trial's ``best.<metric>`` (mean over seeds) in start order, with the running best.

    ``df`` is a trials frame; trials are ordered by ``start_time`` (then frame order), one
    panel per experiment.
    """
    trials = _per_trial(df, metric)
    if "start_time" in trials.columns:
        trials = trials.sort_values("start_time", kind="stable", na_position="last")
    groups = (
        list(trials.groupby("experiment", sort=True))
        if "experiment" in trials
        else [("all", trials)]
    )
    colours = _families(trials["loss"]) if "loss" in trials else {}
    fig, axes = _figure(len(groups), width=6.0)
    for ax, (key, grp) in zip(axes, groups, strict=True):
        order = list(range(1, len(grp) + 1))
        values = grp["value"].to_numpy()
        for family in sorted(colours):
            mask = (grp["loss"] == family).to_numpy()
            if mask.any():
                ax.scatter(
                    [o for o, m in zip(order, mask, strict=True) if m],
                    values[mask],
                    color=colours[family],
                    label=str(family),
                    zorder=3,
                )
        running = pd.Series(values).cummax() if mode == "max" else pd.Series(values).cummin()
        ax.step(order, running, where="post", color="black", label="running best")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("trial (by start time)")
        ax.set_ylabel(f"best {metric}")
        ax.set_title(_label(key))
        ax.legend(fontsize="small")
    return _save(fig, path)


def plot_learning_curves(
    df: pd.DataFrame,
    history: pd.DataFrame,
    path: str | PathLike[str],
    metric: str = "exact_match",
    mode: str = "max",
) -> Path:
    """``metric`` per epoch of the best trial of each family, one panel per task / model.

    ``df`` is a trials frame (it picks, per group and family, the trial of the ranked best
    configuration with the best mean ``best.<metric>`` over seeds); ``history`` is
    :func:`analysis.load.load_history` output. The curve is the trial-level value (``seed``
    NA, the mean over seeds), or the mean of the per-seed values where the trial reported none.
    """
    keys = _keys(df, _GROUP)
    best = best_configurations(df, metric, keys, mode)
    if best.empty:
        raise LossearchError(f"nothing to plot: no finished trials with '{metric}'")
    rows, _ = ranked_rows(df, metric, keys)  # the rows best_configurations chose from
    params = [c for c in rows.columns if c.startswith("param.")]
    join = [*keys, "loss", *params]
    # The trials of each best configuration; the best of them by mean over its seeds.
    matched = rows.merge(best[join], on=join, how="inner")
    column = metric_column(df, metric)
    per_trial = (
        matched.groupby([*join, "experiment", "trial_id"], dropna=False, sort=False)[column]
        .mean()
        .reset_index()
        .sort_values(column, ascending=mode == "min", kind="stable")
        .groupby([*keys, "loss"], dropna=False, sort=False)
        .head(1)
    )
    curves = history[history["metric"] == metric]
    if curves.empty:
        raise LossearchError(f"nothing to plot: no per-epoch '{metric}' in the history")
    groups = (
        list(per_trial.groupby(keys, dropna=False, sort=True)) if keys else [("all", per_trial)]
    )
    colours = _families(per_trial["loss"])
    fig, axes = _figure(len(groups))
    for ax, (key, grp) in zip(axes, groups, strict=True):
        for _, trial in grp.sort_values("loss").iterrows():
            mine = curves[
                (curves["experiment"] == trial["experiment"])
                & (curves["trial_id"] == trial["trial_id"])
            ]
            mean_rows = mine[mine["seed"].isna()]
            series = (
                mean_rows.groupby("epoch")["value"].mean()
                if len(mean_rows)
                else mine.groupby("epoch")["value"].mean()
            )
            if series.empty:
                continue
            ax.plot(
                series.index,
                series.to_numpy(),
                marker="o",
                color=colours[trial["loss"]],
                label=f"{trial['loss']} ({trial['trial_id']})",
            )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(_label(key))
        ax.legend(fontsize="small")
    return _save(fig, path)


def plot_expected_max(
    curves: pd.DataFrame,
    path: str | PathLike[str],
    metric: str = "exact_match",
    by: Sequence[str] = _GROUP,
) -> Path:
    """Expected best value against the number of trials k, one line per family.

    ``curves`` is :func:`analysis.expected_max.expected_max` output (grouping keys, ``loss``,
    ``k``, ``expected_max``); one panel per task / model, x = k (integer ticks), y = the
    expected best over k trials (Dodge et al., 2019).
    """
    if curves.empty:
        raise LossearchError("nothing to plot: no expected-maximum curves")
    keys = _keys(curves, by)
    groups = list(curves.groupby(keys, dropna=False, sort=True)) if keys else [("all", curves)]
    colours = _families(curves["loss"]) if "loss" in curves.columns else {}
    fig, axes = _figure(len(groups))
    for ax, (key, grp) in zip(axes, groups, strict=True):
        lines = grp.groupby("loss", sort=True) if "loss" in grp.columns else [(metric, grp)]
        for family, fam in lines:
            fam = fam.sort_values("k")
            ax.plot(
                fam["k"],
                fam["expected_max"],
                marker="o",
                markersize=3,
                color=colours.get(family, "C0"),
                label=f"{family} (n={int(fam['k'].max())})",
            )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("trials k")
        ax.set_ylabel(f"expected best {metric}")
        ax.set_title(_label(key))
        ax.legend(fontsize="small")
    fig.suptitle(f"Expected best validation {metric} after k trials")
    return _save(fig, path)
