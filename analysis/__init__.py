"""Analysis of lossearch experiments: tidy frames in, tidy frames (and figures) out.

Flow: :func:`load_trials` / :func:`load_history` read Ray Tune experiment directories;
:func:`rank_losses`, :func:`parameter_importance` and :func:`rank_agreement` answer one
question each; :mod:`analysis.plots` draws; :func:`run_analysis` writes everything for
``lossearch analyze``.

SciPy and matplotlib (~1.5 s of imports) load only with the names that need them:
:func:`rank_agreement`, the ``plot_*`` functions and :mod:`analysis.report`'s names are
imported on first access (PEP 562), so a reader of the frames (the search driver) does not
pay for them.
"""

from __future__ import annotations

from analysis.confirmed import load_confirmed, read_correctness
from analysis.expected_max import expected_max, expected_max_curve
from analysis.importance import parameter_importance
from analysis.load import PartialExperimentWarning, load_history, load_trials, metric_mode
from analysis.rank import best_configurations, configurations, rank_losses
from analysis.tables import markdown_table
from analysis.verdict import format_delta, verdict, write_verdict
from lossearch.lazy import lazy_exports

_LAZY = {
    "rank_agreement": "agreement",
    "plot_expected_max": "plots",
    "plot_family_bars": "plots",
    "plot_learning_curves": "plots",
    "plot_metric_vs_lr": "plots",
    "plot_optimization_history": "plots",
    "Analysis": "report",
    "run_analysis": "report",
}

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())


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
