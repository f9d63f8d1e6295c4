"""Export the best trial of an experiment as a training config that ``lossearch train`` re-runs.

The best trial is the finished trial (not pruned, not errored) whose *final* metric (the
last epoch's value, which is what a re-run reproduces), averaged over its seeds, is best.
The exported config is complete and carries one seed: the trial's first seed; the header
comment states that seed's own final metric, which ``lossearch train --config best.yaml``
reproduces on the same machine.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from lossearch.errors import LossearchError


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
    exp: str, metric: str | None = None, mode: str | None = None, per_loss: bool = False
) -> list[dict[str, Any]]:
    """The best trial (or the best per loss family): dicts with config, family, trial, value."""
    from analysis import load_trials
    from lossearch.search.driver import read_search_file
    from lossearch.search.space import trial_to_config

    meta = read_search_file(exp)
    metric = metric or meta.get("metric", "exact_match")
    mode = mode or meta.get("mode", "max")
    df = load_trials([exp])
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
    picked: list[str] = []
    seen: set[str] = set()
    for trial_id in ranked.index:
        family = df.loc[df["trial_id"] == trial_id, "loss"].iloc[0]
        if per_loss and family in seen:
            continue
        seen.add(family)
        picked.append(trial_id)
        if not per_loss:
            break
    out = []
    for trial_id in picked:
        rows = df[df["trial_id"] == trial_id].sort_values("seed")
        first = rows.iloc[0]
        cfg = trial_to_config(meta["base_config"], _flat_params(first))
        cfg = cfg.model_copy(update={"seed": int(first["seed"])})
        out.append(
            {
                "config": cfg,
                "family": first["loss"],
                "trial_id": trial_id,
                "metric": metric,
                "trial_mean": float(means[trial_id]),
                "seed_value": float(first[col]),
            }
        )
    return out


def _write(entry: dict[str, Any], path: Path) -> None:
    header = (
        f"# lossearch export: trial {entry['trial_id']} ({entry['family']}), "
        f"final {entry['metric']} {entry['seed_value']:.4f} with seed {entry['config'].seed} "
        f"(mean over the trial's seeds {entry['trial_mean']:.4f})\n"
        f"# re-run with: lossearch train --config {path.name}\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(entry["config"].to_dict(), sort_keys=False))


def export_best(
    exp: str,
    *,
    metric: str | None = None,
    mode: str | None = None,
    out: str | Path = "best.yaml",
    per_loss: bool = False,
) -> list[Path]:
    """Write the best config to ``out`` (or, with ``per_loss``, ``<stem>-<family>.yaml``)."""
    out = Path(out)
    written = []
    for entry in best_configs(exp, metric, mode, per_loss):
        path = out.with_name(f"{out.stem}-{entry['family']}{out.suffix}") if per_loss else out
        _write(entry, path)
        written.append(path)
    return written
