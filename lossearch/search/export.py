"""Export the best trial of an experiment as a training config that ``lossearch train`` re-runs.

When the experiment has a confirm stage with a verdict (``EXP/confirm/verdict.csv``), the
export is the confirmed winner: the family whose configuration has the best *test* mean over
the confirm seeds, with that configuration and the first confirm seed. Otherwise the best
trial is the finished trial (not pruned, not errored) whose *final* metric (the
last epoch's value, which is what a re-run reproduces), averaged over its seeds, is best.
The exported config is complete and carries one seed: the trial's first seed; the header
comment states that seed's own final metric, which ``lossearch train --config best.yaml``
reproduces on the same machine.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from lossearch.errors import LossearchError

if TYPE_CHECKING:
    import pandas as pd


def _flat_params(row: Any) -> dict[str, Any]:
    """The trial's flat Tune config rebuilt from ``param.*`` columns (NaN = not applicable)."""
    flat: dict[str, Any] = {"loss.family": row["loss"]}
    for col, value in row.items():
        if not col.startswith("param."):
            continue
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        flat[col[len("param.") :]] = value.item() if hasattr(value, "item") else value
    return flat


def best_configs(
    exp: str,
    metric: str | None = None,
    mode: str | None = None,
    per_loss: bool = False,
    top_k: int = 1,
    *,
    trials: pd.DataFrame | None = None,
) -> list[dict[str, Any]]:
    """The best trial, or with ``per_loss`` the ``top_k`` best of each loss family.

    Ranked by the seed mean of the final (validation) metric over finished trials. Returns
    dicts with ``config``, ``family``, ``trial_id``, ``rank`` (1 = the family's best),
    ``metric``, ``trial_mean`` and ``seed_value`` (the first seed's own final value).
    ``trials``: ``exp``'s trials frame when the caller has read it already
    (:func:`analysis.load_trials`; not modified), else it is read here.
    """
    from analysis import load_trials, metric_mode
    from lossearch.experiment import check_mode, read_meta
    from lossearch.search.space import trial_to_config

    meta = read_meta(exp)
    metric = metric or meta["metric"]
    mode = check_mode(mode) if mode else metric_mode(
        metric, search_metric=meta["metric"], search_mode=meta["mode"]
    )
    df = load_trials([exp]) if trials is None else trials
    col = f"final.{metric}"
    if col not in df.columns:
        raise LossearchError(f"metric '{metric}' was not reported by any trial of {exp}")
    # only trials that ran their whole schedule: a pruned trial's last value is from an
    # earlier epoch than its config trains, so re-running it would not reproduce that value
    df = df[(df["status"] == "finished") & df[col].notna()]
    if df.empty:
        raise LossearchError(f"no trial of {exp} finished with a value for '{metric}'")
    means = df.groupby("trial_id")[col].mean()
    ranked = means.sort_values(ascending=(mode == "min"))
    picked: list[tuple[str, int]] = []
    taken: dict[str, int] = {}
    for trial_id in ranked.index:
        family = df.loc[df["trial_id"] == trial_id, "loss"].iloc[0]
        if per_loss and taken.get(family, 0) >= top_k:
            continue
        taken[family] = taken.get(family, 0) + 1
        picked.append((trial_id, taken[family]))
        if not per_loss:
            break
    out = []
    for trial_id, rank in picked:
        rows = df[df["trial_id"] == trial_id].sort_values("seed")
        first = rows.iloc[0]
        cfg = trial_to_config(meta["base_config"], _flat_params(first))
        cfg = cfg.model_copy(update={"seed": int(first["seed"])})
        out.append(
            {
                "config": cfg,
                "family": first["loss"],
                "trial_id": trial_id,
                "rank": rank,
                "metric": metric,
                "trial_mean": float(means[trial_id]),
                "seed_value": float(first[col]),
            }
        )
    return out


def search_header(entry: dict[str, Any]) -> str:
    """The first comment line of an export of a search trial (a :func:`best_configs` entry)."""
    return (
        f"# lossearch export: trial {entry['trial_id']} ({entry['family']}), "
        f"final {entry['metric']} {entry['seed_value']:.4f} with seed {entry['config'].seed} "
        f"(mean over the trial's seeds {entry['trial_mean']:.4f})\n"
    )


def _write(entry: dict[str, Any], path: Path) -> None:
    header = search_header(entry) + f"# re-run with: lossearch train --config {path.name}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(entry["config"].to_dict(), sort_keys=False))


def confirmed_winner(exp: str) -> dict[str, Any] | None:
    """The confirm stage's winner of ``exp`` as an export entry (the verdict's rank 1), or
    None without a verdict."""
    import io
    import json

    import pandas as pd

    from lossearch.config import validate
    from lossearch.search.verdict_report import VERDICT_FILE
    from lossearch.storage import file_exists, join_uri, read_text

    confirm_dir = join_uri(exp, "confirm")
    if not file_exists(confirm_dir, VERDICT_FILE):
        return None
    # Tune's trial ids are 8 hex digits: "01234567" or "8e123456" must stay text, not numbers
    # rank: the verdict's own (1 = best mean, in the confirm's direction)
    table = pd.read_csv(
        io.StringIO(read_text(confirm_dir, VERDICT_FILE)), dtype={"config_id": str}
    ).sort_values(["rank", "mean"])
    if table.empty:
        return None
    top = table.iloc[0]
    run_id = f"{top['loss']}-{top['config_id']}"
    record = json.loads(read_text(join_uri(confirm_dir, "runs", run_id), "result.json"))
    cfg = validate(record["config"]).model_copy(update={"seed": int(record["seeds"][0])})
    return {
        "config": cfg,
        "family": str(top["loss"]),
        "trial_id": str(top["config_id"]),
        "run_id": run_id,
        "header": (
            f"# lossearch export: {top['loss']} (trial {top['config_id']}), confirmed on the "
            f"test split: mean {top['mean']:.4f} [{top['ci_low']:.4f}, {top['ci_high']:.4f}] "
            f"over {int(top['n_seeds'])} seeds and {int(top['n_questions'])} questions\n"
        ),
    }


def pick_winner(
    exp: str,
    metric: str | None = None,
    mode: str | None = None,
    *,
    trials: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """What :func:`export_best` exports without ``per_loss``: the confirmed winner (an entry
    with ``run_id``, the confirm run's folder name) when a verdict exists and neither a
    ``metric`` nor a ``mode`` is asked for, else the search's best trial by them (a
    :func:`best_configs` entry, from ``trials`` when given).
    """
    winner = None if metric or mode else confirmed_winner(exp)
    return winner if winner is not None else best_configs(exp, metric, mode, trials=trials)[0]


def export_best(
    exp: str,
    *,
    metric: str | None = None,
    mode: str | None = None,
    out: str | Path = "best.yaml",
    per_loss: bool = False,
    trials: pd.DataFrame | None = None,
) -> list[Path]:
    """Write the best config to ``out`` (or, with ``per_loss``, ``<stem>-<family>.yaml``).

    The confirmed winner when a verdict exists (and none of ``per_loss``, ``metric``, ``mode``
    is asked for), else the search's best by validation (from ``trials``, the
    experiment's trials frame, when the caller has it; else it is read).
    """
    from lossearch.storage import check_local_target

    out = check_local_target(out, "--out", kind="file")  # absolute, ~ expanded
    winner = None if per_loss else pick_winner(exp, metric, mode, trials=trials)
    if winner is not None and "run_id" in winner:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            winner["header"] + f"# re-run with: lossearch train --config {out.name}\n"
            + yaml.safe_dump(winner["config"].to_dict(), sort_keys=False)
        )
        return [out]
    written = []
    entries = [winner] if winner is not None else best_configs(
        exp, metric, mode, per_loss, trials=trials
    )
    paths = [
        out.with_name(f"{out.stem}-{entry['family']}{out.suffix}") if per_loss else out
        for entry in entries
    ]
    for path in paths:  # every one checked before the first is written
        check_local_target(path, "--out", kind="file")
    for entry, path in zip(entries, paths, strict=True):
        _write(entry, path)
        written.append(path)
    return written
