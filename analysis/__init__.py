"""Analysis of lossearch experiments: tidy frames in, tidy frames (and figures) out.

Flow: :func:`load_trials` / :func:`load_history` read Ray Tune experiment directories;
:func:`rank_losses`, :func:`parameter_importance` and :func:`rank_agreement` answer one
question each; :mod:`analysis.plots` draws; :func:`run_analysis` writes everything for
``lossearch analyze``.
"""

from analysis.agreement import rank_agreement
from analysis.confirmed import load_confirmed, read_correctness
from analysis.expected_max import expected_max, expected_max_curve
from analysis.importance import parameter_importance
from analysis.load import PartialExperimentWarning, load_history, load_trials, metric_mode
from analysis.plots import (
    plot_expected_max,
    plot_family_bars,
    plot_learning_curves,
    plot_metric_vs_lr,
    plot_optimization_history,
)
from analysis.rank import best_configurations, configurations, rank_losses
from analysis.report import Analysis, markdown_table, run_analysis
from analysis.verdict import format_delta, verdict, write_verdict

__all__ = [
    "Analysis",
    "PartialExperimentWarning",
    "best_configurations",
    "configurations",
    "expected_max",
    "expected_max_curve",
    "format_delta",
    "load_confirmed",
    "load_history",
    "load_trials",
    "markdown_table",
    "metric_mode",
    "parameter_importance",
    "plot_expected_max",
    "plot_family_bars",
    "plot_learning_curves",
    "plot_metric_vs_lr",
    "plot_optimization_history",
    "rank_agreement",
    "rank_losses",
    "read_correctness",
    "run_analysis",
    "verdict",
    "write_verdict",
]
