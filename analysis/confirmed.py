"""Read the confirm stage of an experiment (re-trained best configurations) into a tidy frame.

The confirm stage (``lossearch confirm``) re-trains each loss family's best configuration(s)
of a search under several seeds and evaluates each on the held-out test set, keeping every
question's correctness. Its files, under the experiment directory ``EXP`` (a local path or a
storage URI such as ``s3://bucket/searches/quick``):

* ``EXP/confirm/confirm.yaml``: ``metric``, ``mode``, ``seeds``, ``top_k`` and ``runs``, a
  list of ``{id, family, trial_id, rank}`` (``rank`` 1 = the family's best configuration of
  the search, by validation);
* ``EXP/confirm/runs/<id>/result.json``: one JSON object, written when the run has finished:
  ``id``, ``family``, ``trial_id``, ``rank``, ``task``, ``model``, ``seeds``, ``epochs``,
  ``wall_s``, ``config`` (the full training config), ``validation`` and ``test`` (each
  ``{"<seed>": {metric: value}}``, seed keys are strings), ``lr_edge``;
* ``EXP/confirm/runs/<id>/test_predictions.seed<k>.jsonl``: one line per test question in the
  test set's order, ``{"index", "prediction", "reference", "exact_match", ...}``.

Local paths and storage URIs are both read through :mod:`pyarrow.fs` (see
:mod:`analysis.location`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import yaml

from analysis.location import locate
from analysis.records import dotted_get, is_number
from lossearch.errors import LossearchError
from lossearch.experiment import CONFIRM_DIR
from lossearch.storage import is_uri

CONFIRM_FILE = "confirm.yaml"
RESULT_FILE = "result.json"

#: The columns every confirmed frame starts with, in this order (then ``test.<metric>``,
#: ``val.<metric>``, ``predictions``, ``lr_edge``).
BASE_COLUMNS = [
    "experiment",
    "task",
    "model",
    "loss",
    "config_id",
    "run_id",
    "rank",
    "seed",
    "epochs",
]
TAIL_COLUMNS = ["predictions", "lr_edge"]


def predictions_name(seed: int) -> str:
    """The file name of one seed's per-question test predictions."""
    return f"test_predictions.seed{seed}.jsonl"


def _as_float(value: Any) -> float:
    if isinstance(value, bool):
        return float(value)
    return float(value) if is_number(value) else math.nan


def _file_location(exp_display: str, exp_root: str, uri: bool, *parts: str) -> str:
    """The absolute path (local) or the full URI (storage) of a file inside an experiment."""
    if not uri:
        return "/".join([exp_root.rstrip("/"), *parts])
    base, _, query = exp_display.partition("?")
    joined = "/".join([base.rstrip("/"), *parts])
    return f"{joined}?{query}" if query else joined


def _seed_metrics(block: Any, seed: int) -> dict[str, float]:
    if not isinstance(block, dict):
        return {}
    metrics = block.get(str(seed), block.get(seed))  # type: ignore[call-overload]
    if not isinstance(metrics, dict):
        return {}
    return {
        str(k): _as_float(v) for k, v in metrics.items() if is_number(v) or isinstance(v, bool)
    }


def _run_rows(
    exp: str, display: str, root: str, uri: bool, entry: dict[str, Any], result: dict[str, Any]
) -> list[dict[str, Any]]:
    run_id = str(result.get("id", entry.get("id")))
    config = result.get("config") if isinstance(result.get("config"), dict) else {}
    test = result.get("test") if isinstance(result.get("test"), dict) else {}
    validation = result.get("validation") if isinstance(result.get("validation"), dict) else {}
    seeds: list[int] = []
    for key in test:
        try:
            seeds.append(int(key))
        except (TypeError, ValueError):
            raise LossearchError(
                f"{display}: run {run_id}: test seed key '{key}' is not an integer"
            ) from None
    rank = result.get("rank", entry.get("rank"))
    epochs = result.get("epochs", dotted_get(config, "optim.epochs"))
    common = {
        "experiment": exp,
        "task": result.get("task", dotted_get(config, "task.name")),
        "model": result.get("model", dotted_get(config, "model.name_or_path")),
        "loss": result.get("family", entry.get("family")),
        "config_id": str(result.get("trial_id", entry.get("trial_id"))),
        "run_id": run_id,
        "rank": int(rank) if is_number(rank) else None,
        "epochs": int(epochs) if is_number(epochs) else None,
        "lr_edge": bool(result.get("lr_edge", False)),
    }
    rows = []
    for seed in sorted(set(seeds)):
        row = dict(common, seed=seed)
        row.update({f"test.{m}": v for m, v in _seed_metrics(test, seed).items()})
        row.update({f"val.{m}": v for m, v in _seed_metrics(validation, seed).items()})
        row["predictions"] = _file_location(
            display, root, uri, CONFIRM_DIR, "runs", run_id, predictions_name(seed)
        )
        rows.append(row)
    return rows


def _experiment_rows(path: str | PathLike[str]) -> list[dict[str, Any]]:
    exp = str(path)
    loc = locate(path)
    text = loc.read_text(loc.join(CONFIRM_DIR, CONFIRM_FILE))
    if text is None:
        raise LossearchError(
            f"not an experiment with a confirm stage (no {CONFIRM_DIR}/{CONFIRM_FILE}): {exp}"
        )
    try:
        meta = yaml.safe_load(text)
    except yaml.YAMLError as e:
        first = (str(e).strip().splitlines() or ["YAML error"])[0]
        raise LossearchError(f"{exp}: malformed {CONFIRM_DIR}/{CONFIRM_FILE}: {first}") from None
    runs = meta.get("runs") if isinstance(meta, dict) else None
    if not isinstance(runs, list):
        raise LossearchError(f"{exp}: {CONFIRM_DIR}/{CONFIRM_FILE} has no list of 'runs'")
    rows: list[dict[str, Any]] = []
    for entry in runs:
        if not isinstance(entry, dict) or "id" not in entry:
            raise LossearchError(f"{exp}: a run in {CONFIRM_DIR}/{CONFIRM_FILE} has no 'id'")
        run_id = str(entry["id"])
        raw = loc.read_text(loc.join(CONFIRM_DIR, "runs", run_id, RESULT_FILE))
        if raw is None:
            continue  # not finished (yet)
        try:
            result = json.loads(raw)
        except json.JSONDecodeError as e:
            raise LossearchError(f"{exp}: run {run_id}: malformed {RESULT_FILE}: {e}") from None
        if not isinstance(result, dict):
            raise LossearchError(f"{exp}: run {run_id}: {RESULT_FILE} is not a JSON object")
        rows.extend(_run_rows(exp, loc.display, loc.root, loc.is_uri, entry, result))
    if not rows:
        raise LossearchError(f"{exp}: the confirm stage has no finished run yet")
    return rows


def load_confirmed(
    paths: str | PathLike[str] | Sequence[str | PathLike[str]],
) -> pd.DataFrame:
    """One row per (experiment, loss family, configuration, seed) of the confirm stage.

    Runs listed in ``confirm.yaml`` without a ``result.json`` have not finished and are
    skipped; a run's seeds are the keys of its ``test`` block.

    Args:
        paths: experiment directories or storage URIs, one or several.

    Raises:
        LossearchError: a path without ``confirm/confirm.yaml`` (``"not an experiment with a
            confirm stage ...: PATH"``), a malformed ``confirm.yaml`` or ``result.json``, or an
            experiment whose confirm stage has no finished run.

    Returns:
        A frame with, in this order:

        * ``experiment`` (str): the path or URI as given.
        * ``task``, ``model`` (str): from ``result.json`` (else its config's ``task.name``,
          ``model.name_or_path``).
        * ``loss`` (str): the loss family; ``config_id`` (str): the search trial id of the
          configuration; ``run_id`` (str): the confirm run's id.
        * ``rank`` (Int64): the configuration's rank within its family in the search
          (1 = best by validation).
        * ``seed`` (int64), ``epochs`` (Int64).
        * ``test.<metric>`` and ``val.<metric>`` (float) for every test and validation metric
          (NaN where a seed lacks it).
        * ``predictions`` (str): the absolute path (or, for a storage URI, the full URI) of
          that seed's ``test_predictions.seed<k>.jsonl``.
        * ``lr_edge`` (bool): the configuration's learning rate was at the edge of the
          searched range.
    """
    items = [paths] if isinstance(paths, (str, PathLike)) else list(paths)
    rows: list[dict[str, Any]] = []
    for path in items:
        rows.extend(_experiment_rows(path))
    frame = pd.DataFrame(rows)
    tests = sorted(c for c in frame.columns if c.startswith("test."))
    vals = sorted(c for c in frame.columns if c.startswith("val."))
    frame = frame[[*BASE_COLUMNS, *tests, *vals, *TAIL_COLUMNS]].copy()
    frame["rank"] = pd.array(list(frame["rank"]), dtype="Int64")
    frame["epochs"] = pd.array(list(frame["epochs"]), dtype="Int64")
    frame["seed"] = frame["seed"].astype("int64")
    frame["lr_edge"] = frame["lr_edge"].astype(bool)
    for col in [*tests, *vals]:
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype(float)
    return frame.reset_index(drop=True)


# --------------------------------------------------------------------------- per-question files


def _read_text(path: str) -> str:
    try:
        if is_uri(path):
            fs, inner = pafs.FileSystem.from_uri(path)
            with fs.open_input_stream(inner) as stream:
                return stream.read().decode("utf-8", errors="replace")
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except (OSError, ValueError):  # missing file, bad URI (ArrowInvalid is a ValueError)
        raise LossearchError(f"cannot read predictions file: {path}") from None


def read_predictions(path: str, metric: str) -> tuple[np.ndarray, list[str] | None]:
    """One seed's per-question ``metric`` and references, in the test set's order.

    Lines are ordered by their ``index`` when every line has one (duplicates raise).

    Returns:
        ``(values, references)``: a float array of length n_questions, and the ``reference``
        strings (None when the file has none).

    Raises:
        LossearchError: unreadable file, malformed line, or a line without a numeric
            ``metric``.
    """
    records: list[dict[str, Any]] = []
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise LossearchError(f"{path}: line {lineno} is not JSON") from None
        if not isinstance(record, dict):
            raise LossearchError(f"{path}: line {lineno} is not a JSON object")
        value = record.get(metric)
        if not (is_number(value) or isinstance(value, bool)):
            raise LossearchError(f"{path}: line {lineno} has no numeric '{metric}'")
        records.append(record)
    indices = [r.get("index") for r in records]
    if records and all(is_number(i) for i in indices):
        if len(set(indices)) != len(indices):
            raise LossearchError(f"{path}: duplicate question index")
        records = [r for _, r in sorted(zip(indices, records, strict=True), key=lambda t: t[0])]
    values = np.array([_as_float(r[metric]) for r in records], dtype=float)
    refs = [r.get("reference") for r in records]
    references = [str(r) for r in refs] if records and all(r is not None for r in refs) else None
    return values, references


def _read_matrix(paths: Sequence[str], metric: str) -> tuple[np.ndarray, list[str] | None]:
    if not paths:
        raise LossearchError("no predictions files to read")
    rows, references = [], None
    for path in paths:
        values, refs = read_predictions(str(path), metric)
        if rows and len(values) != len(rows[0]):
            raise LossearchError(
                f"{path}: {len(values)} questions, but {paths[0]} has {len(rows[0])}"
            )
        if refs is not None:
            if references is not None and refs != references:
                raise LossearchError(f"{path}: references differ from those of {paths[0]}")
            references = refs
        rows.append(values)
    return np.vstack(rows), references


def read_correctness(paths: Sequence[str], metric: str = "exact_match") -> np.ndarray:
    """Per-question ``metric`` of several seeds of one configuration.

    Args:
        paths: one ``test_predictions.seed<k>.jsonl`` per seed (the ``predictions`` column of
            :func:`load_confirmed`), local paths or URIs.
        metric: the per-question key to read (``exact_match``: 0 or 1).

    Returns:
        A float array of shape ``[n_seeds, n_questions]``, row i from ``paths[i]``, columns in
        the test set's order.

    Raises:
        LossearchError: the files hold different numbers of questions (or different
            references), or a line lacks ``metric``.
    """
    return _read_matrix(paths, metric)[0]
