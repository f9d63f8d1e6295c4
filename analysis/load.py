"""Read lossearch experiments into tidy frames, without a running Ray (nor importing it).

An experiment directory (local path or storage URI such as ``s3://bucket/searches/quick``)
holds what Ray Tune writes plus the search's own files (:mod:`lossearch.experiment`). The
modules behind this one, each with one job:

* :mod:`analysis.location`: the directory's filesystem (local, S3, GCS ... via
  :mod:`pyarrow.fs`, opened once per experiment);
* :mod:`analysis.tune_files`: Tune's files (experiment state, each trial's ``result.json``
  and ``error.txt``) read into pydantic-checked records;
* :func:`lossearch.experiment.read_meta`: ``lossearch_search.yaml`` (task, model, configured
  epochs, the search metric and its mode come from its ``base_config``, ``metric``,
  ``mode``, overridden by the trial's own ``task.name``, ``model.name_or_path``,
  ``optim.epochs``);
* :mod:`analysis.trial_rows`: one trial as rows of the frames below.

Partial or still-running experiments load with what they have and a
:class:`PartialExperimentWarning`; they never raise. Why Tune's files are read here and not
through ``ray.tune.ExperimentAnalysis``: ``docs/CONTRACTS.md``, "Analysis".
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.fs as pafs

from analysis.location import Location, locate
from analysis.records import is_number
from analysis.trial_rows import history_rows, metric_mode, trial_rows
from analysis.tune_files import (
    PartialExperimentWarning,
    TuneTrial,
    read_state,
    read_trials,
    state_files,
)
from lossearch.errors import LossearchError
from lossearch.experiment import SEARCH_FILE, read_meta
from lossearch.storage import is_uri

__all__ = [
    "BASE_COLUMNS",
    "HISTORY_COLUMNS",
    "STATUSES",
    "Experiment",
    "PartialExperimentWarning",
    "check_distinct",
    "experiment_key",
    "experiment_name",
    "history_frame",
    "is_experiment",
    "load_history",
    "load_trials",
    "metric_mode",
    "read_experiments",
    "read_search_settings",
    "trials_frame",
]

#: The columns every trials frame starts with, in this order.
BASE_COLUMNS = [
    "experiment",
    "trial_id",
    "status",
    "error",
    "task",
    "model",
    "loss",
    "seed",
    "epochs",
    "wall_s",
    "start_time",
]
#: The columns of :func:`load_history`.
HISTORY_COLUMNS = ["experiment", "trial_id", "seed", "epoch", "metric", "value"]

STATUSES = ("finished", "pruned", "errored", "running")

Paths = str | PathLike[str] | Sequence[str | PathLike[str]]


# --------------------------------------------------------------------------- the experiment


def is_experiment(path: str | PathLike[str]) -> bool:
    """True when ``path`` holds at least one ``experiment_state-*.json``."""
    try:
        return bool(state_files(locate(path)))
    except LossearchError:
        return False


def experiment_name(path: str | PathLike[str]) -> str:
    """The experiment's name: the last component of its directory or URI path."""
    text = str(path)
    if is_uri(text):
        return text.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return Path(text).expanduser().resolve().name


def experiment_key(path: str | PathLike[str]) -> str:
    """What identifies the experiment at ``path``: a local path made absolute with ``~``
    expanded and symlinks followed (``exps/x``, ``exps/x/`` and ``/abs/exps/x`` are one key);
    a storage URI as given, less a trailing ``/`` of its path (``?query`` kept)."""
    text = os.fspath(path)
    if is_uri(text):
        where, sep, query = text.partition("?")
        return where.rstrip("/") + sep + query
    return Path(text).expanduser().resolve().as_posix()


def check_distinct(paths: Iterable[str | PathLike[str]]) -> None:
    """Refuse an experiment given twice (same :func:`experiment_key`): its trials would be
    counted twice, inflating ``n`` and making p-values falsely significant.

    Raises:
        LossearchError: ``"experiment given twice: PATH"`` (both spellings when they differ).
    """
    seen: dict[str, str] = {}
    for path in paths:
        text, key = os.fspath(path), experiment_key(path)
        if key in seen:
            first = seen[key]
            also = "" if first == text else f" (as {first} and as {text})"
            raise LossearchError(f"experiment given twice: {first}{also}")
        seen[key] = text


def _check_found(loc: Location) -> None:
    """Refuse a local path that does not exist (``"experiment not found: PATH"``); a URI is
    left to :func:`~analysis.tune_files.read_state`."""
    if not loc.is_uri and not Path(loc.root).exists():
        raise LossearchError(f"experiment not found: {loc.display}")


def _settings(loc: Location) -> dict[str, Any]:
    try:
        found = loc.fs.get_file_info(loc.join(SEARCH_FILE)).type == pafs.FileType.File
    except OSError:
        found = False
    return read_meta(loc.display if loc.is_uri else loc.root) if found else {}


def read_search_settings(path: str | PathLike[str]) -> dict[str, Any]:
    """The experiment's ``lossearch_search.yaml`` as :func:`lossearch.experiment.read_meta`
    returns it (checked; every key of :class:`~lossearch.experiment.SearchMeta`, defaults
    where the file lacks one); ``{}`` when it has none.

    Raises:
        LossearchError: the file is malformed or does not fit ``SearchMeta``.
    """
    return _settings(locate(path))


@dataclass
class Experiment:
    """One experiment as read: its name, where it is, its search settings (``{}`` without a
    ``lossearch_search.yaml``) and its trials in Tune's order."""

    name: str
    display: str
    settings: dict[str, Any]
    trials: list[TuneTrial]


def read_experiments(paths: Paths) -> list[Experiment]:
    """Read each experiment's files once (see the module docstring); the frames of
    :func:`trials_frame` and :func:`history_frame` (behind :func:`load_trials` and
    :func:`load_history`) are built from this.

    Raises:
        LossearchError: an experiment given twice (:func:`check_distinct`), a local path
            that does not exist (``"experiment not found: PATH"``), a path without an
            ``experiment_state-*.json`` (``"not a Ray Tune experiment: PATH"``), a URI that
            cannot be opened, a malformed search file.
    """
    items = [paths] if isinstance(paths, (str, PathLike)) else list(paths)
    check_distinct(items)
    experiments = []
    for path in items:
        loc = locate(path)
        _check_found(loc)
        state = read_state(loc)
        settings = _settings(loc)
        if not settings:
            warnings.warn(
                f"{loc.display}: no {SEARCH_FILE}; task, model and configured epochs unknown",
                PartialExperimentWarning,
                stacklevel=2,
            )
        experiments.append(Experiment(loc.name, loc.display, settings, read_trials(loc, state)))
    return experiments


# --------------------------------------------------------------------------- the frames


def _order_columns(frame: pd.DataFrame) -> pd.DataFrame:
    for col in BASE_COLUMNS:
        if col not in frame.columns:
            frame[col] = pd.Series(dtype=object)
    params = sorted(c for c in frame.columns if c.startswith("param."))
    finals = sorted(c for c in frame.columns if c.startswith("final."))
    bests = sorted(c for c in frame.columns if c.startswith("best."))
    rest = [c for c in frame.columns if c not in {*BASE_COLUMNS, *params, *finals, *bests}]
    return frame[[*BASE_COLUMNS, *params, *finals, *bests, *rest]]


def _tidy_params(frame: pd.DataFrame) -> pd.DataFrame:
    """Each ``param.*`` column numeric (float, NaN where absent) or text (None where absent)."""
    for col in [c for c in frame.columns if c.startswith("param.")]:
        values = frame[col]
        present = values.dropna()
        if len(present) and all(is_number(v) for v in present):
            whole = len(present) == len(values) and all(isinstance(v, int) for v in present)
            frame[col] = pd.to_numeric(values, errors="coerce").astype("int64" if whole else float)
        else:
            frame[col] = values.map(lambda v: None if v is None or v is pd.NA else str(v)).astype(
                object
            )
    return frame


def trials_frame(
    experiments: Sequence[Experiment], modes: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """The frame of :func:`load_trials` from experiments already read."""
    rows: list[dict[str, Any]] = []
    for exp in experiments:
        skipped, running = [], []
        for trial in exp.trials:
            if trial.status not in ("TERMINATED", "ERROR"):
                if not trial.results:
                    skipped.append(trial.trial_id)
                    continue
                running.append(trial.trial_id)
            rows.extend(trial_rows(exp.name, exp.settings, trial, modes))
        if skipped or running:
            warnings.warn(
                f"{exp.display}: experiment not finished: {len(running)} running trial(s) "
                f"loaded with partial results, {len(skipped)} without results skipped",
                PartialExperimentWarning,
                stacklevel=3,
            )
    frame = _tidy_params(_order_columns(pd.DataFrame(rows)))
    frame["seed"] = pd.array(
        [
            None if s is None or (isinstance(s, float) and math.isnan(s)) else int(s)
            for s in frame["seed"]
        ],
        dtype="Int64",
    )
    frame["epochs"] = (
        pd.to_numeric(frame["epochs"]).astype("int64") if len(frame) else frame["epochs"]
    )
    for col in ("wall_s", "start_time"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype(float)
    return frame.reset_index(drop=True)


def history_frame(experiments: Sequence[Experiment]) -> pd.DataFrame:
    """The frame of :func:`load_history` from experiments already read."""
    rows = [row for exp in experiments for t in exp.trials for row in history_rows(exp.name, t)]
    frame = pd.DataFrame(rows, columns=HISTORY_COLUMNS)
    frame["seed"] = pd.array(list(frame["seed"]), dtype="Int64")
    frame["epoch"] = frame["epoch"].astype("int64")
    frame["value"] = frame["value"].astype(float)
    return frame.sort_values(["experiment", "trial_id", "epoch", "metric", "seed"]).reset_index(
        drop=True
    )


def load_trials(paths: Paths, *, modes: Mapping[str, str] | None = None) -> pd.DataFrame:
    """One row per training run (trial x seed) of one or more Ray Tune experiments.

    Args:
        paths: experiment directories or storage URIs (``s3://bucket/exp``); each must hold an
            ``experiment_state-*.json``, else :class:`~lossearch.errors.LossearchError`
            ``"not a Ray Tune experiment: PATH"`` (``"experiment not found: PATH"`` for a
            local path that does not exist); none may be given twice (:func:`check_distinct`).
        modes: per-metric direction overrides for ``best.*`` (``{"perplexity": "min"}``);
            see :func:`metric_mode` for the default rule.

    Returns:
        A frame with, in this order:

        * ``experiment`` (str): the experiment directory's name.
        * ``trial_id`` (str): Tune's trial id; a trial under S seeds gives S rows sharing it.
        * ``status`` (str): ``"finished"``; ``"pruned"`` (Tune TERMINATED with fewer epochs
          than the trial's ``optim.epochs``, the base config's unless the trial overrides it:
          stopped early by ASHA); ``"errored"`` (Tune ERROR); ``"running"`` (RUNNING, PENDING
          or PAUSED; only trials that already reported something, with a warning).
        * ``error`` (str | None): for errored trials the exception line of ``error.txt``
          (``"RuntimeError: loss diverged"``); None otherwise.
        * ``task``, ``model`` (str | None): ``base_config`` ``task.name`` and
          ``model.name_or_path`` from ``lossearch_search.yaml``, overridden by the trial's own.
        * ``loss`` (str): the loss family (the trial's ``"loss.family"``).
        * ``seed`` (Int64, may be NA): the seed of this row. Rows come from the per-seed
          ``seed<k>/<metric>`` keys (one per seed of the trial's ``"seeds"``, else of the
          search file's ``seeds``, plus any other seed found in the results); a trial without
          them gives one row of its trial-level metrics whose seed is its only seed, or NA
          when it had several.
        * ``epochs`` (int): epochs reported (the last ``epoch`` key, else
          ``training_iteration``).
        * ``wall_s`` (float): Tune's ``time_total_s`` of the trial (shared by its seed rows:
          the seeds train inside one trial).
        * ``start_time`` (float): when Tune started the trial, Unix seconds (NaN if unknown).
        * ``param.<key>`` for every other config key, ``<key>`` being the dotted training-config
          key it sets (``param.optim.lr``, ``param.loss.focal.gamma``): int64 when every
          row has an integer, float for other numbers, str otherwise (``"seeds"`` and
          ``"loss.family"`` are not parameters); NaN/None where the parameter does not apply
          (conditional space).
        * ``final.<metric>`` (float): the value at the last epoch that reported it.
        * ``best.<metric>`` (float): the best value over epochs, max or min by
          :func:`metric_mode` (the search metric by the search's mode, ``loss*`` min, others
          max). Per-seed metrics are the seed's own (``seed<k>/<metric>``); a trial-level
          metric without per-seed keys (``tokens_per_s``, ``loss.ce`` ...) is repeated on
          each seed row.
    """
    return trials_frame(read_experiments(paths), modes)


def load_history(paths: Paths) -> pd.DataFrame:
    """The per-epoch metrics of every trial (running ones included), long format.

    Returns:
        A frame with columns ``experiment`` (str), ``trial_id`` (str), ``seed`` (Int64),
        ``epoch`` (int, 1-based), ``metric`` (str), ``value`` (float). A per-seed key
        ``seed<k>/<metric>`` gives ``seed = k`` and ``metric = <metric>``; a trial-level key
        (the mean over the trial's seeds, or a metric reported once per trial such as
        ``tokens_per_s``) gives ``seed = <NA>``. Tune's bookkeeping keys (``time_total_s``,
        ``training_iteration`` ...) are left out. Epochs missing from a truncated
        ``result.json`` are missing here too (only the last epoch is recovered).
    """
    return history_frame(read_experiments(paths))

