"""The end of ``lossearch search`` and ``resume``: per-family ranking and the best config.

:func:`finish_search` reads the experiment's trials frame (:func:`analysis.load_trials`)
once and ranks and exports from it. (The driver's own last step, applying ``--keep``, reads
it once before: :func:`lossearch.search.retention.after_search`. A read takes milliseconds;
two explicit reads are kept over handing a frame between the two through module state.)
"""

from __future__ import annotations

import warnings
from pathlib import Path

from lossearch.errors import LossearchError
from lossearch.experiment import read_meta
from lossearch.storage import is_uri


def best_config_path(exp: str) -> Path:
    """``<exp>/best.yaml`` for a local experiment, ``./best-<name>.yaml`` for a URI."""
    if is_uri(exp):
        name = exp.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]  # no ?endpoint_override=...
        return Path(f"best-{name}.yaml").resolve()
    return Path(exp) / "best.yaml"


def finish_search(exp: str) -> Path:
    """Print the per-loss-family ranking table and export the best config; return its path.

    The table (:func:`analysis.tables.rankings_table`) ranks only finished trials at the full
    epoch budget on the search metric (a validation score), titled with the number of seeds;
    the difference to CE is printed only with its 95% interval (``n/a (1 seed)`` without
    one). What the ranking left out (pruned, errored, shorter trials) is the table's caption.
    """
    from rich.console import Console

    from analysis import load_trials, rank_losses
    from analysis.rank import RankingWarning
    from analysis.tables import rankings_table
    from lossearch.search.export import export_best

    meta = read_meta(exp)
    metric, mode = meta["metric"], meta["mode"]
    console = Console()
    df = load_trials([exp])
    counts = df.drop_duplicates("trial_id")["status"].value_counts().to_dict() if len(df) else {}
    summary = "trials: " + (", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "none")
    column = f"best.{metric}"
    if column not in df.columns or df[column].isna().all():
        # every trial failed before its first evaluation (a bad path, an out-of-memory): say
        # why, rather than "unknown metric" of an empty ranking
        console.print(summary)
        errors = df["error"].dropna() if "error" in df.columns else []
        why = f"; the first error: {errors.iloc[0]}" if len(errors) else ""
        raise LossearchError(f"no trial reported {metric}{why}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankingWarning)  # shown as the table's caption
        ranks = rank_losses(df, metric=metric, by=(), mode=mode)
    console.print(rankings_table(ranks, metric, mode=mode))
    console.print(summary)
    path = export_best(exp, out=best_config_path(exp), trials=df)[0]
    # soft_wrap: a long path stays on one line, so the command can be copied as it is
    console.print(f"best config: {path}", soft_wrap=True)
    console.print(f"re-run it:   lossearch train --config {path}", soft_wrap=True)
    return path
