"""``lossearch analyze``: load experiments, rank, plot, and write the files and ``report.md``.

:func:`run_analysis` does the work and returns an :class:`Analysis`; it prints nothing.
:mod:`analysis.tables` turns the results into what the CLI prints.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.agreement import rank_agreement
from analysis.expected_max import expected_max, summarize_expected_max
from analysis.importance import parameter_importance
from analysis.load import (
    check_distinct,
    experiment_name,
    history_frame,
    metric_mode,
    read_experiments,
    trials_frame,
)
from analysis.plots import (
    plot_expected_max,
    plot_family_bars,
    plot_learning_curves,
    plot_metric_vs_lr,
    plot_optimization_history,
)
from analysis.rank import (
    CONFIDENCE,
    RANK_COLUMNS,
    RankingWarning,
    check_mode,
    metric_column,
    rank_losses,
)
from analysis.tables import DEFAULT_METRIC, markdown_table, seeds_phrase
from lossearch.errors import LossearchError
from lossearch.storage import is_uri

GROUP = ("task", "model")
#: Written into an output folder before anything else: the folder is an analysis's, which a
#: later analysis may overwrite (:func:`check_out_dir`).
MARKER = ".lossearch_analysis"
REPORT_TITLE = "# Loss search analysis"


@dataclass
class Analysis:
    """What :func:`run_analysis` computed and wrote.

    ``files`` maps a short name (``"trials.parquet"``, ``"bars"`` ...) to the written path;
    ``notes`` says what was skipped and why (including the rows a ranking left out);
    ``warnings`` holds the loaders' warnings (partial experiments) so that the caller decides
    how to show them. ``expected_max`` is :func:`analysis.expected_max.expected_max` output.
    """

    out_dir: Path
    metric: str
    mode: str
    trials: pd.DataFrame
    history: pd.DataFrame
    rankings: pd.DataFrame
    importance: pd.DataFrame | None = None
    expected_max: pd.DataFrame | None = None
    agreement: dict[str, pd.DataFrame] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def default_out_dir(first: str | PathLike[str]) -> Path:
    """``<EXP>/analysis`` for a local experiment, ``./analysis-<name>`` for a storage URI."""
    if is_uri(os.fspath(first)):
        return Path.cwd() / f"analysis-{experiment_name(first)}"
    return Path(first).expanduser().resolve() / "analysis"


def is_analysis_dir(path: Path) -> bool:
    """True when ``path`` holds an earlier analysis: its :data:`MARKER`, or (written before
    the marker existed) ``trials.parquet`` beside a ``report.md`` that starts with
    :data:`REPORT_TITLE`."""
    if (path / MARKER).is_file():
        return True
    report = path / "report.md"
    if not ((path / "trials.parquet").is_file() and report.is_file()):
        return False
    try:
        with report.open(encoding="utf-8", errors="replace") as f:
            return f.readline().rstrip("\n") == REPORT_TITLE
    except OSError:
        return False


def check_out_dir(out_dir: Path, shown: str) -> None:
    """Refuse to write into ``out_dir`` when it is a non-empty folder that is not an earlier
    analysis (:func:`is_analysis_dir`): its files would be replaced. Absent, empty or an
    earlier analysis: fine. ``shown`` names it in the message (``"--out DIR"``).

    Raises:
        LossearchError: ``"SHOWN is not empty and not an earlier lossearch analysis"``.
    """
    if not out_dir.is_dir() or is_analysis_dir(out_dir) or not any(out_dir.iterdir()):
        return
    raise LossearchError(
        f"{shown} is not empty and not an earlier lossearch analysis; name another folder"
    )


# --------------------------------------------------------------------------- the analysis


def _resolve_metric(
    settings: Mapping[str, Any], metric: str | None, mode: str | None
) -> tuple[str, str]:
    """The metric and mode asked for, else the search's (``settings``: the first
    experiment's ``lossearch_search.yaml``), else :data:`DEFAULT_METRIC`."""
    chosen = metric or settings.get("metric") or DEFAULT_METRIC
    if mode is None:
        mode = metric_mode(
            chosen, search_metric=settings.get("metric"), search_mode=settings.get("mode")
        )
    return str(chosen), check_mode(mode)


def _noting(notes: list[str], compute: Callable[[], Any]) -> Any:
    """``compute()``, with its :class:`RankingWarning` messages appended to ``notes`` (once
    each) instead of shown; any other warning is re-issued as it was."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RankingWarning)
        value = compute()
    for w in caught:
        if issubclass(w.category, RankingWarning):
            if str(w.message) not in notes:
                notes.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return value


def run_analysis(
    paths: Sequence[str | PathLike[str]],
    metric: str | None = None,
    mode: str | None = None,
    out: str | PathLike[str] | None = None,
) -> Analysis:
    """Load the experiments, rank the families, draw the figures, write every file.

    ``metric`` and ``mode`` default to the first experiment's search metric and mode (from
    ``lossearch_search.yaml``), else ``exact_match`` with :func:`analysis.load.metric_mode`.
    ``out`` defaults to :func:`default_out_dir` of the first path.

    Writes into ``out``: ``trials.parquet``, ``trials.csv``, ``history.csv``,
    ``rankings.csv``, ``expected_max.csv``, ``importance.csv`` and
    ``agreement_<across>.csv`` when computable, ``bars.png``, ``expected_max.png``,
    ``metric_vs_lr.png``, ``history.png``, ``learning_curves.png`` when there is something to
    draw, and ``report.md`` linking those that were written. What the rankings left out
    (pruned, errored or short trials ...) goes to ``notes``.

    Every check comes before anything is written: ``out`` must be absent, empty or an
    earlier analysis (:func:`check_out_dir`, which also applies to the default folder);
    :data:`MARKER` is then written first, so that a re-run may overwrite the folder.

    Raises:
        LossearchError: an experiment given twice, a path that does not exist or is not an
            experiment, an ``out`` that is a file or a non-empty folder of something else, an
            unknown metric, a bad mode.
    """
    if not paths:
        raise LossearchError("no experiment given")
    paths = list(paths)
    check_distinct(paths)
    from lossearch.storage import check_local_target

    if out is None:
        out_dir = default_out_dir(paths[0])
        check_out_dir(out_dir, f"output folder {out_dir}")
    else:
        out_dir = check_local_target(out, "--out", kind="dir")
        check_out_dir(out_dir, f"--out {out}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        experiments = read_experiments(paths)  # each experiment's files read once
        trials = trials_frame(experiments)
        history = history_frame(experiments)
    seen: dict[str, None] = {}
    for w in caught:
        seen.setdefault(str(w.message), None)
    metric, mode = _resolve_metric(experiments[0].settings, metric, mode)
    if not trials.empty:
        metric_column(trials, metric)  # an unknown metric is a user error
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKER).write_text("written by lossearch analyze; a re-run may overwrite it\n")

    result = Analysis(
        out_dir=out_dir,
        metric=metric,
        mode=mode,
        trials=trials,
        history=history,
        rankings=pd.DataFrame(),
        warnings=list(seen),
    )
    files = result.files
    trials.to_parquet(out_dir / "trials.parquet", index=False)
    files["trials.parquet"] = out_dir / "trials.parquet"
    trials.to_csv(out_dir / "trials.csv", index=False)
    files["trials.csv"] = out_dir / "trials.csv"
    history.to_csv(out_dir / "history.csv", index=False)
    files["history.csv"] = out_dir / "history.csv"

    if trials.empty:
        result.rankings = pd.DataFrame(columns=[*GROUP, *RANK_COLUMNS])
        result.notes.append("no trials with results yet: nothing to rank")
    else:
        result.rankings = _noting(
            result.notes, lambda: rank_losses(trials, metric, by=GROUP, mode=mode)
        )
    result.rankings.to_csv(out_dir / "rankings.csv", index=False)
    files["rankings.csv"] = out_dir / "rankings.csv"

    if not trials.empty:
        try:
            result.importance = parameter_importance(trials, metric, mode)
            result.importance.to_csv(out_dir / "importance.csv", index=False)
            files["importance.csv"] = out_dir / "importance.csv"
        except LossearchError as e:
            result.notes.append(f"parameter importance not computed: {e}")
        result.expected_max = _noting(
            result.notes, lambda: expected_max(trials, metric, by=(*GROUP, "loss"), mode=mode)
        )
        result.expected_max.to_csv(out_dir / "expected_max.csv", index=False)
        files["expected_max.csv"] = out_dir / "expected_max.csv"
        for across in ("model", "task"):
            if trials[across].nunique() > 1:
                table = _noting(
                    result.notes,
                    lambda across=across: rank_agreement(trials, metric, across=across, mode=mode),
                )
                result.agreement[across] = table
                name = f"agreement_{across}.csv"
                table.to_csv(out_dir / name, index=False)
                files[name] = out_dir / name

        figures = {
            "bars": lambda p: plot_family_bars(result.rankings, p, metric),
            "expected_max": lambda p: plot_expected_max(result.expected_max, p, metric),
            "metric_vs_lr": lambda p: plot_metric_vs_lr(trials, p, metric),
            "history": lambda p: plot_optimization_history(trials, p, metric, mode),
            "learning_curves": lambda p: plot_learning_curves(trials, history, p, metric, mode),
        }
        for name, draw in figures.items():
            try:
                files[name] = draw(out_dir / f"{name}.png")
            except LossearchError as e:
                result.notes.append(f"{name}.png not drawn: {e}")

    report = out_dir / "report.md"
    report.write_text(render_report(result))
    files["report.md"] = report
    return result


_FIGURE_TITLES = {
    "bars": "Mean per loss family (best configuration, seed std; dashed: CE)",
    "expected_max": "Expected best value after k trials (Dodge et al. 2019)",
    "metric_vs_lr": "Metric against learning rate",
    "history": "Optimisation history (running best)",
    "learning_curves": "Learning curves of the best trial per family",
}


def render_report(result: Analysis) -> str:
    """The markdown of ``report.md``: tables plus links to the figures that exist on disk."""
    trials = result.trials
    parts = [f"{REPORT_TITLE}\n"]
    names = sorted(trials["experiment"].dropna().unique()) if len(trials) else []
    parts.append(
        f"Experiments: {', '.join(f'`{n}`' for n in names) or '(none with results)'}  \n"
        f"Metric: `best.{result.metric}` ({result.mode} is better)  \n"
        f"Rows: {len(trials)} training runs from "
        f"{trials[['experiment', 'trial_id']].drop_duplicates().shape[0] if len(trials) else 0} "
        "trials\n"
    )
    if len(trials):
        counts = (
            trials.drop_duplicates(["experiment", "trial_id"])["status"]
            .value_counts()
            .rename_axis("status")
            .reset_index(name="trials")
        )
        parts.append("## Trials\n\n" + markdown_table(counts))

    parts.append(
        f"## Ranking (validation, {seeds_phrase(result.rankings)})\n\n"
        "Per task and model, each family's best configuration (best mean over seeds) on the "
        "validation split. Only finished trials that ran the full epoch budget of their task "
        "and model rank; pruned, errored and running trials, and shorter ones, are left out "
        "(see Notes). `delta_vs_ce` = mean − CE's mean, in metric units "
        f"({'higher' if result.mode == 'max' else 'lower'} is better), with its "
        f"{CONFIDENCE:.0%} Welch t interval `[delta_ci_low, delta_ci_high]` over seeds; "
        "`p_value` is Welch's t-test against CE (two-sided). Interval and test need two "
        "seeds on each side; with one they are empty.\n\n"
    )
    parts.append(markdown_table(result.rankings) if len(result.rankings) else "(nothing to rank)\n")

    if result.expected_max is not None and len(result.expected_max):
        parts.append(
            "## Expected best after k trials\n\n"
            "Dodge et al. (2019), *Show Your Work*: for each family, the expected best "
            f"validation `{result.metric}` among k trials drawn (with replacement) from its n "
            "finished trials, each valued by its mean over seeds: "
            "E = Σᵢ v₍ᵢ₎ · ((i/n)^k − ((i−1)/n)^k) over the sorted values "
            f"({'a minimum, mirrored, ' if result.mode == 'min' else ''}exact, no resampling). "
            "k = 1 is the mean trial; a family that needs many trials to win shows a late "
            "crossing. Full curves in `expected_max.csv`.\n\n"
        )
        parts.append(markdown_table(summarize_expected_max(result.expected_max)))

    figures = [
        (name, path)
        for name, path in result.files.items()
        if name in _FIGURE_TITLES and Path(path).is_file()
    ]
    if figures:
        parts.append("## Figures\n")
        for name, path in figures:
            rel = (
                Path(path).relative_to(result.out_dir).as_posix()
                if Path(path).is_relative_to(result.out_dir)
                else Path(path).as_posix()
            )
            parts.append(f"### {_FIGURE_TITLES[name]}\n\n![{name}]({rel})\n")

    if result.importance is not None and len(result.importance):
        parts.append("## Parameter importance\n\nOptuna PED-ANOVA on the rebuilt study.\n\n")
        parts.append(markdown_table(result.importance, floatfmt=".3f"))
    for across, table in result.agreement.items():
        parts.append(
            f"## Rank agreement across {across}\n\nKendall's tau between the family rankings "
            f"of each pair of {across}s.\n\n" + markdown_table(table, floatfmt=".3f")
        )
    if len(trials):
        errored = trials[trials["status"] == "errored"].drop_duplicates(["experiment", "trial_id"])
        if len(errored):
            parts.append(
                "## Errored trials\n\n"
                + markdown_table(errored[["experiment", "trial_id", "loss", "epochs", "error"]])
            )
    if result.notes or result.warnings:
        parts.append(
            "## Notes\n\n" + "".join(f"- {n}\n" for n in [*result.warnings, *result.notes])
        )
    data_files = [
        n for n, p in result.files.items() if n not in _FIGURE_TITLES and Path(p).is_file()
    ]
    parts.append("## Files\n\n" + "".join(f"- [{n}]({n})\n" for n in [*data_files]))
    return "\n".join(parts)
