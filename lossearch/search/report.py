"""The end of ``lossearch search`` and ``resume``: checkpoints kept, per-family ranking, best
config.

The experiment's trials frame (:func:`analysis.load_trials`) is read once when a search
ends: :func:`search_ended` (the driver's last step) reads it, applies ``--keep`` with it and
hands it over to :func:`finish_search` (what the command line calls next), which ranks and
exports from it. Each of these also reads the experiment itself when called on its own.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from lossearch.errors import LossearchError
from lossearch.experiment import read_meta
from lossearch.storage import is_uri

if TYPE_CHECKING:
    import pandas as pd

# exp -> (trials frame, the warnings its reading gave): set by search_ended, taken (once) by
# finish_search in the same process
_handed_over: dict[str, tuple[pd.DataFrame, list[warnings.WarningMessage]]] = {}


def best_config_path(exp: str) -> Path:
    """``<exp>/best.yaml`` for a local experiment, ``./best-<name>.yaml`` for a URI."""
    if is_uri(exp):
        name = exp.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]  # no ?endpoint_override=...
        return Path(f"best-{name}.yaml").resolve()
    return Path(exp) / "best.yaml"


def search_ended(exp: str, keep: str) -> str:
    """The driver's last step once a search or its resume has ended: read the trials frame,
    delete the checkpoints ``keep`` does not keep
    (:func:`lossearch.search.retention.after_search`) and leave the frame for
    :func:`finish_search`. Returns the one line saying what was kept; a failure to read is
    that line too, never an exception."""
    from analysis import load_trials
    from lossearch.search.retention import after_search

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # shown by finish_search, with the table
            trials = load_trials([exp])
    except (OSError, LossearchError):
        return after_search(exp, keep)  # its line says why
    _handed_over[exp] = (trials, caught)
    return after_search(exp, keep, trials=trials)


def _take_over(exp: str) -> pd.DataFrame | None:
    """The frame :func:`search_ended` left for ``exp`` (its warnings issued now), or None."""
    if exp not in _handed_over:
        return None
    trials, caught = _handed_over.pop(exp)
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return trials


def finish_search(exp: str, *, trials: pd.DataFrame | None = None) -> Path:
    """Print the per-loss-family ranking table and export the best config; return its path.

    The table (:func:`analysis.report.rankings_table`) ranks only finished trials at the full
    epoch budget on the search metric (a validation score), titled with the number of seeds;
    the difference to CE is printed only with its 95% interval (``n/a (1 seed)`` without
    one). What the ranking left out (pruned, errored, shorter trials) is the table's caption.
    ``trials``: the experiment's trials frame; by default the one :func:`search_ended` left
    for ``exp``, else it is read.
    """
    from rich.console import Console

    from analysis import load_trials, rank_losses
    from analysis.rank import RankingWarning
    from analysis.report import rankings_table
    from lossearch.search.export import export_best

    meta = read_meta(exp)
    metric, mode = meta["metric"], meta["mode"]
    console = Console()
    if trials is None:
        trials = _take_over(exp)
    df = load_trials([exp]) if trials is None else trials
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankingWarning)  # shown as the table's caption
        ranks = rank_losses(df, metric=metric, by=(), mode=mode)
    console.print(rankings_table(ranks, metric, mode=mode))
    counts = df.drop_duplicates("trial_id")["status"].value_counts().to_dict()
    console.print("trials: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    path = export_best(exp, out=best_config_path(exp), trials=df)[0]
    # soft_wrap: a long path stays on one line, so the command can be copied as it is
    console.print(f"best config: {path}", soft_wrap=True)
    console.print(f"re-run it:   lossearch train --config {path}", soft_wrap=True)
    return path
