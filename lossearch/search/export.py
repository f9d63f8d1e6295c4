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


EXPORT_MARK = b"# lossearch export"
"""How every config export begins (its header's first line, since the first release)."""


def check_replaceable(path: Path) -> None:
    """Return when ``path`` may be (re)written by an export: it is absent, empty, or an
    earlier export (its first line starts with ``# lossearch export``); else a one-line
    :class:`LossearchError` (a user's own file is never replaced)."""
    try:
        with path.open("rb") as f:
            start = f.read(len(EXPORT_MARK))
    except FileNotFoundError:
        return
    except OSError as err:
        raise LossearchError(f"cannot read {path}: {err.strerror}") from None
    if start and start != EXPORT_MARK:
        raise LossearchError(
            f"{path} exists and is not a lossearch export (its first line is not "
            "'# lossearch export ...'): not replaced; move it or name another --out"
        )


def _write(entry: dict[str, Any], path: Path) -> None:
    """Write ``entry``'s config to ``path`` (atomically) under its header: the confirmed
    winner's ``header`` or :func:`search_header`, then the re-run command."""
    from lossearch.storage import write_text

    header = entry.get("header") or search_header(entry)
    text = (
        header + f"# re-run with: lossearch train --config {path.name}\n"
        + yaml.safe_dump(entry["config"].to_dict(), sort_keys=False)
    )
    try:
        write_text(str(path.parent), path.name, text)
    except OSError as err:
        raise LossearchError(f"cannot write {path}: {err.strerror or err}") from None


WINNER_COLUMNS = ("rank", "loss", "config_id", "mean", "ci_low", "ci_high", "n_seeds",
                  "n_questions")
"""The columns of ``verdict.csv`` (:data:`analysis.verdict.VERDICT_COLUMNS`) an export of the
confirmed winner reads; all but ``loss`` and ``config_id`` are numbers."""
_NUMBER_COLUMNS = tuple(c for c in WINNER_COLUMNS if c not in ("loss", "config_id"))
_COUNT_COLUMNS = ("rank", "n_seeds", "n_questions")


def _rerun(exp: str) -> str:
    return f"re-run lossearch confirm {exp}"


def _read_file(folder: str, name: str, exp: str) -> str:
    """The text of ``folder/name``; a one-line error naming it when absent or unreadable."""
    from lossearch.storage import join_uri, read_text

    where = join_uri(folder, name)
    try:
        return read_text(folder, name)
    except FileNotFoundError:
        raise LossearchError(f"{where}: missing; {_rerun(exp)}") from None
    except OSError as err:
        raise LossearchError(f"cannot read {where}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise LossearchError(f"{where}: not a text file; {_rerun(exp)}") from None


def read_verdict(exp: str) -> pd.DataFrame | None:
    """``EXP/confirm/verdict.csv`` sorted by ``rank`` then ``mean`` (trial ids kept as
    text), or None without one.

    Raises:
        LossearchError: one line naming the file: empty, not CSV, a column of
            :data:`WINNER_COLUMNS` missing, a count or metric column not numeric.
    """
    import io

    import pandas as pd

    from lossearch.search.verdict_report import VERDICT_FILE
    from lossearch.storage import file_exists, join_uri

    confirm_dir = join_uri(exp, "confirm")
    if not file_exists(confirm_dir, VERDICT_FILE):
        return None
    where = join_uri(confirm_dir, VERDICT_FILE)
    text = _read_file(confirm_dir, VERDICT_FILE, exp)
    try:
        # Tune's trial ids are 8 hex digits: "01234567" or "8e123456" must stay text
        table = pd.read_csv(io.StringIO(text), dtype={"config_id": str})
    except pd.errors.EmptyDataError:
        raise LossearchError(f"{where}: empty, not a lossearch verdict; {_rerun(exp)}") from None
    except ValueError as err:  # pandas' ParserError, a bad encoding
        why = str(err).strip().splitlines()[-1] if str(err).strip() else "unreadable"
        raise LossearchError(f"{where}: not a CSV verdict ({why}); {_rerun(exp)}") from None
    for col in WINNER_COLUMNS:
        if col not in table.columns:
            raise LossearchError(
                f"{where}: not a lossearch verdict (no '{col}' column); {_rerun(exp)}"
            )
    for col in _NUMBER_COLUMNS:
        values = pd.to_numeric(table[col], errors="coerce")
        bad = values.isna() & table[col].notna()
        if bad.any() or (col in _COUNT_COLUMNS and values.isna().any()):
            raise LossearchError(
                f"{where}: not a lossearch verdict (column '{col}' holds a value that is not "
                f"a number); {_rerun(exp)}"
            )
        table[col] = values
    # rank: the verdict's own (1 = best mean, in the confirm's direction)
    return table.sort_values(["rank", "mean"])


def read_result(exp: str, run_id: str) -> dict[str, Any]:
    """``EXP/confirm/runs/<run_id>/result.json`` with a valid ``config`` and a non-empty
    ``seeds`` list.

    Raises:
        LossearchError: one line naming the file: missing, malformed JSON, not a result
            (no mapping, no ``config`` or ``seeds``), a config that does not validate.
    """
    import json

    from lossearch.config import validate
    from lossearch.search.confirm import RESULT_FILE
    from lossearch.storage import join_uri

    run_dir = join_uri(exp, "confirm", "runs", run_id)
    where = join_uri(run_dir, RESULT_FILE)
    text = _read_file(run_dir, RESULT_FILE, exp)
    fix = f"delete it and {_rerun(exp)}"
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise LossearchError(f"{where}: malformed JSON (line {err.lineno}); {fix}") from None
    seeds = record.get("seeds") if isinstance(record, dict) else None
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise LossearchError(f"{where}: not a confirm result (no 'config' mapping); {fix}")
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) for s in seeds)):
        raise LossearchError(f"{where}: not a confirm result (no 'seeds' list); {fix}")
    try:
        record["config"] = validate(record["config"])
    except LossearchError as err:
        raise LossearchError(f"{where}: {err}; {fix}") from None
    return record


def confirmed_winner(exp: str) -> dict[str, Any] | None:
    """The confirm stage's winner of ``exp`` as an export entry (the verdict's rank 1), or
    None without a verdict (or with one that has no rows).

    Raises:
        LossearchError: one line naming the file, when ``verdict.csv`` or the winner's
            ``result.json`` is missing, corrupt or not lossearch's (see :func:`read_verdict`,
            :func:`read_result`).
    """
    table = read_verdict(exp)
    if table is None or table.empty:
        return None
    top = table.iloc[0]
    run_id = f"{top['loss']}-{top['config_id']}"
    record = read_result(exp, run_id)
    cfg = record["config"].model_copy(update={"seed": int(record["seeds"][0])})
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

    Every target is checked before the first is written: a directory, a path under a file,
    or an existing file that is not an earlier export (:func:`check_replaceable`: a user's
    own YAML) is a one-line :class:`LossearchError` and nothing is written. Each file is
    written atomically (a temporary file, then a rename).
    """
    from lossearch.storage import check_local_target

    out = check_local_target(out, "--out", kind="file")  # absolute, ~ expanded
    winner = None if per_loss else pick_winner(exp, metric, mode, trials=trials)
    entries = [winner] if winner is not None else best_configs(
        exp, metric, mode, per_loss, trials=trials
    )
    paths = [
        out.with_name(f"{out.stem}-{entry['family']}{out.suffix}") if per_loss else out
        for entry in entries
    ]
    for path in paths:  # every one checked before the first is written
        check_local_target(path, "--out", kind="file")
        check_replaceable(path)
    for entry, path in zip(entries, paths, strict=True):
        _write(entry, path)
    return paths
