"""Read Ray Tune experiment directories into tidy frames, without a running Ray.

An experiment directory (local path or storage URI such as ``s3://bucket/searches/quick``)
holds what Ray Tune writes plus ``lossearch_search.yaml`` (see ``docs/CONTRACTS.md``,
"Search trials"). What is read, and from where:

* the trial table from the newest ``experiment_state-*.json`` (``trial_data[i] =
  [trial_json, runtime_json]``): trial id, Tune status, flat config, ``relative_logdir``,
  ``last_result``, ``metric_analysis``, ``error_filename``, ``start_time``;
* the per-epoch results from each trial's ``result.json`` (JSON lines); when that file is
  missing, empty or truncated (Tune truncates it on some restores), the epochs it lacks are
  filled from ``last_result`` and the best values from ``metric_analysis``;
* the error of an errored trial from ``error.txt`` in the trial directory;
* task, model, configured epochs, the search metric and its mode from
  ``lossearch_search.yaml`` (``base_config``, ``metric``, ``mode``), overridden by the trial's
  own parameters (``task.name``, ``model.name_or_path``, ``optim.epochs``).

Local paths are read with :class:`pyarrow.fs.LocalFileSystem`; anything with a scheme goes
through :meth:`pyarrow.fs.FileSystem.from_uri`, so S3/GCS/HDFS work with the usual
environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``,
``AWS_ENDPOINT_URL`` ...).

Partial or still-running experiments load with what they have and a
:class:`PartialExperimentWarning`; they never raise.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import yaml

from lossearch.errors import LossearchError
from lossearch.experiment import SEARCH_FILE

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

# Keys Tune adds to every result; they are bookkeeping, not metrics.
_TUNE_KEYS = frozenset(
    {
        "epoch",
        "timestamp",
        "checkpoint_dir_name",
        "should_checkpoint",
        "done",
        "training_iteration",
        "trial_id",
        "date",
        "time_this_iter_s",
        "time_total_s",
        "pid",
        "hostname",
        "node_ip",
        "config",
        "time_since_restore",
        "iterations_since_restore",
        "timesteps_since_restore",
        "experiment_tag",
        "experiment_id",
        "warmup_time",
    }
)
# Config keys that are not searched parameters (they have their own columns).
_NOT_PARAMS = frozenset({"seeds", "seed", "loss.family"})
_SEED_KEY = re.compile(r"^seed(\d+)/(.+)$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class PartialExperimentWarning(UserWarning):
    """An experiment was loaded with trials missing, still running or with truncated results."""


# --------------------------------------------------------------------------- storage access


@dataclass(frozen=True)
class _Location:
    """Where an experiment lives: a pyarrow filesystem and the directory's path in it."""

    fs: pafs.FileSystem
    root: str
    display: str
    is_uri: bool

    @property
    def name(self) -> str:
        return self.root.rstrip("/").rsplit("/", 1)[-1]

    def join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *(p.strip("/") for p in parts if p)])

    def read_bytes(self, path: str) -> bytes | None:
        try:
            with self.fs.open_input_stream(path) as stream:
                return stream.read()
        except (FileNotFoundError, OSError):
            return None

    def read_text(self, path: str) -> str | None:
        data = self.read_bytes(path)
        return None if data is None else data.decode("utf-8", errors="replace")

    def listdir(self, path: str | None = None) -> list[pafs.FileInfo]:
        try:
            return self.fs.get_file_info(pafs.FileSelector(path or self.root, recursive=False))
        except (FileNotFoundError, OSError):
            return []


def is_uri(path: str | PathLike[str]) -> bool:
    """True for ``scheme://...`` storage URIs (``s3://``, ``gs://``, ``file://``)."""
    return "://" in str(path)


def _locate(path: str | PathLike[str]) -> _Location:
    text = str(path)
    if is_uri(text):
        try:
            fs, root = pafs.FileSystem.from_uri(text)
        except (ValueError, OSError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise LossearchError(f"cannot open storage URI {text}: {e}") from None
        return _Location(fs, root.rstrip("/") or "/", text, True)
    local = Path(text).expanduser().resolve()
    return _Location(pafs.LocalFileSystem(), local.as_posix(), text, False)


def _state_files(loc: _Location) -> list[str]:
    names = [
        info.path
        for info in loc.listdir()
        if info.type == pafs.FileType.File
        and info.base_name.startswith("experiment_state-")
        and info.base_name.endswith(".json")
    ]
    # The timestamp in the name sorts chronologically; newest first.
    return sorted(names, key=lambda p: p.rsplit("/", 1)[-1], reverse=True)


def is_experiment(path: str | PathLike[str]) -> bool:
    """True when ``path`` holds at least one ``experiment_state-*.json``."""
    try:
        return bool(_state_files(_locate(path)))
    except LossearchError:
        return False


def experiment_name(path: str | PathLike[str]) -> str:
    """The experiment's name: the last component of its directory or URI path."""
    text = str(path)
    if is_uri(text):
        return text.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return Path(text).expanduser().resolve().name


def read_search_settings(path: str | PathLike[str]) -> dict[str, Any]:
    """The parsed ``lossearch_search.yaml`` of an experiment; ``{}`` when it has none.

    Keys (when written by the lossearch driver): ``space``, ``base_config``, ``metric``,
    ``mode``, ``num_seeds``.
    """
    loc = _locate(path)
    text = loc.read_text(loc.join(SEARCH_FILE))
    if text is None:
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise LossearchError(f"{loc.display}: malformed {SEARCH_FILE}: {e}") from None
    return data if isinstance(data, dict) else {}


# --------------------------------------------------------------------------- raw trial records


@dataclass
class _Trial:
    experiment: str
    trial_id: str
    tune_status: str
    config: dict[str, Any]
    logdir: str | None
    last_result: dict[str, Any]
    metric_analysis: dict[str, dict[str, Any]]
    error_filename: str | None
    start_time: float
    results: list[dict[str, Any]] = field(default_factory=list)
    results_patched: bool = False


@dataclass
class _Experiment:
    name: str
    loc: _Location
    settings: dict[str, Any]
    trials: list[_Trial]


def _flatten(tree: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(_flatten(value, name, sep))
        else:
            out[name] = value
    return out


def _parse_json_lines(text: str) -> list[dict[str, Any]]:
    records = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash or a restore
        if isinstance(obj, dict):
            records.append(obj)
    return records


def _epoch_of(result: Mapping[str, Any], fallback: int) -> int:
    for key in ("epoch", "training_iteration"):
        value = result.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return int(value)
    return fallback


def _dedupe_by_epoch(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per epoch (the last one reported wins: a redone epoch after a restore)."""
    by_epoch: dict[int, dict[str, Any]] = {}
    for i, rec in enumerate(records, start=1):
        by_epoch[_epoch_of(rec, i)] = rec
    return [by_epoch[e] for e in sorted(by_epoch)]


def _find_logdir(loc: _Location, trial_id: str) -> str | None:
    for info in loc.listdir():
        if info.type == pafs.FileType.Directory and f"_{trial_id}_" in info.base_name:
            return info.base_name
    return None


def _read_state(loc: _Location) -> dict[str, Any]:
    files = _state_files(loc)
    if not files:
        raise LossearchError(f"not a Ray Tune experiment: {loc.display}")
    for i, path in enumerate(files):
        text = loc.read_text(path)
        try:
            state = json.loads(text or "")
        except json.JSONDecodeError:
            state = None
        if isinstance(state, dict) and isinstance(state.get("trial_data"), list):
            if i:
                warnings.warn(
                    f"{loc.display}: newest experiment state is unreadable (being written?); "
                    f"using {path.rsplit('/', 1)[-1]}",
                    PartialExperimentWarning,
                    stacklevel=4,
                )
            return state
    raise LossearchError(f"{loc.display}: no readable experiment_state-*.json")


def _as_dict(obj: Any) -> dict[str, Any]:
    if isinstance(obj, str):
        try:
            obj = json.loads(obj)
        except json.JSONDecodeError:
            return {}
    return obj if isinstance(obj, dict) else {}


def _read_experiment(path: str | PathLike[str]) -> _Experiment:
    loc = _locate(path)
    state = _read_state(loc)
    settings = read_search_settings(path)
    name = loc.name
    if not settings:
        warnings.warn(
            f"{loc.display}: no {SEARCH_FILE}; task, model and configured epochs unknown",
            PartialExperimentWarning,
            stacklevel=3,
        )
    trials: list[_Trial] = []
    missing_dirs: list[str] = []
    patched: list[str] = []
    for entry in state["trial_data"]:
        if not isinstance(entry, (list, tuple)) or not entry:
            continue
        tj = _as_dict(entry[0])
        rj = _as_dict(entry[1]) if len(entry) > 1 else {}
        trial_id = str(tj.get("trial_id", ""))
        if not trial_id:
            continue
        config = _flatten(_as_dict(tj.get("config")))
        logdir = tj.get("relative_logdir") or _find_logdir(loc, trial_id)
        start = rj.get("start_time")
        trial = _Trial(
            experiment=name,
            trial_id=trial_id,
            tune_status=str(tj.get("status", "")).upper(),
            config=config,
            logdir=logdir,
            last_result=_as_dict(rj.get("last_result")),
            metric_analysis=_as_dict(rj.get("metric_analysis")),
            error_filename=rj.get("error_filename"),
            start_time=float(start) if isinstance(start, (int, float)) else math.nan,
        )
        text = loc.read_text(loc.join(logdir, "result.json")) if logdir else None
        if text is None and trial.tune_status not in ("PENDING",):
            missing_dirs.append(trial_id)
        records = _dedupe_by_epoch(_parse_json_lines(text or ""))
        last = {k: v for k, v in trial.last_result.items() if k != "config"}
        if last:
            last_epoch = _epoch_of(last, len(records))
            if not records or last_epoch > _epoch_of(records[-1], len(records)):
                records.append(last)
                trial.results_patched = True
                patched.append(trial_id)
        trial.results = records
        trials.append(trial)
    if missing_dirs:
        warnings.warn(
            f"{loc.display}: no result.json for trial(s) {', '.join(missing_dirs)}",
            PartialExperimentWarning,
            stacklevel=3,
        )
    if patched:
        warnings.warn(
            f"{loc.display}: result.json incomplete for trial(s) {', '.join(patched)}; "
            "filled in from the experiment state (per-epoch history has gaps)",
            PartialExperimentWarning,
            stacklevel=3,
        )
    return _Experiment(name=name, loc=loc, settings=settings, trials=trials)


def _read_experiments(
    paths: Iterable[str | PathLike[str]] | str | PathLike[str],
) -> list[_Experiment]:
    if isinstance(paths, (str, PathLike)):
        paths = [paths]
    return [_read_experiment(p) for p in paths]


# --------------------------------------------------------------------------- interpretation


def metric_mode(
    metric: str,
    *,
    search_metric: str | None = None,
    search_mode: str | None = None,
    modes: Mapping[str, str] | None = None,
) -> str:
    """Which direction is better for ``metric``: ``"max"`` or ``"min"``.

    The rule, first match wins: an explicit entry in ``modes``; the search's own metric takes
    the search's ``mode`` (from ``lossearch_search.yaml``); a name starting with ``"loss"``
    (``loss``, ``loss.ce``, ...) is min-better; everything else is max-better.
    """
    if modes and metric in modes:
        return _check_mode(modes[metric])
    if search_metric is not None and metric == search_metric and search_mode:
        return _check_mode(search_mode)
    return "min" if metric.startswith("loss") else "max"


def _check_mode(mode: str) -> str:
    if mode not in ("max", "min"):
        raise LossearchError(f"mode must be 'max' or 'min', got '{mode}'")
    return mode


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _split_metrics(
    result: Mapping[str, Any],
) -> tuple[dict[str, float], dict[int, dict[str, float]]]:
    """Split one result into trial-level metrics and per-seed metrics ``{seed: {name: v}}``."""
    trial_level: dict[str, float] = {}
    per_seed: dict[int, dict[str, float]] = {}
    flat = _flatten({k: v for k, v in result.items() if k != "config"}, sep="/")
    for key, value in flat.items():
        if key in _TUNE_KEYS or not (_is_number(value) or value is None):
            continue
        number = math.nan if value is None else float(value)
        match = _SEED_KEY.match(key)
        if match:
            per_seed.setdefault(int(match.group(1)), {})[match.group(2)] = number
        else:
            trial_level[key] = number
    return trial_level, per_seed


def _first_error_line(text: str | None) -> str | None:
    """The exception line of the last failure in a Tune ``error.txt`` (ANSI codes removed)."""
    if not text:
        return None
    lines = [_ANSI.sub("", ln).rstrip() for ln in text.splitlines()]
    starts = [i for i, ln in enumerate(lines) if ln.startswith("Failure # ")]
    if starts:
        lines = lines[starts[-1] + 1 :]
    frames = [i for i, ln in enumerate(lines) if ln.startswith("  File ")]
    start = frames[-1] + 1 if frames else 0
    for ln in lines[start:]:
        if ln and not ln[0].isspace():
            return ln
    for ln in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b", ln):
            return ln
    return next((ln.strip() for ln in lines if ln.strip()), None)


def _loss_family(base_loss: Any, config: Mapping[str, Any]) -> str | None:
    """``"ce"`` when CE is the only positively weighted component, else the others joined by +."""
    if "loss.family" in config:
        return str(config["loss.family"])
    spec: dict[str, Any] = {}
    if isinstance(base_loss, Mapping):
        for name, comp in base_loss.items():
            if isinstance(comp, Mapping):
                spec[name] = comp.get("weight", 1.0)
            elif _is_number(comp):
                spec[name] = comp
    for key, value in config.items():
        parts = key.split(".")
        if parts[0] == "loss" and len(parts) == 3 and parts[2] == "weight" and _is_number(value):
            spec[parts[1]] = value
        elif parts[0] == "loss" and len(parts) == 2 and _is_number(value):
            spec[parts[1]] = value
    active = sorted(name for name, w in spec.items() if _is_number(w) and w > 0)
    if not active:
        return None
    others = [n for n in active if n != "ce"]
    return "+".join(others) if others else "ce"


def _get(tree: Any, dotted: str) -> Any:
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _configured_epochs(settings: Mapping[str, Any], config: Mapping[str, Any]) -> int | None:
    value = config.get("optim.epochs", _get(settings.get("base_config"), "optim.epochs"))
    return int(value) if _is_number(value) else None


def _status(trial: _Trial, epochs: int, configured: int | None) -> str:
    if trial.tune_status == "ERROR":
        return "errored"
    if trial.tune_status == "TERMINATED":
        if configured is not None and epochs < configured:
            return "pruned"
        return "finished"
    return "running"


def _seeds_of(trial: _Trial, settings: Mapping[str, Any]) -> list[int]:
    seeds = trial.config.get("seeds")
    if isinstance(seeds, (list, tuple)) and all(_is_number(s) for s in seeds):
        return [int(s) for s in seeds]
    seeds = settings.get("seeds")  # the driver's list when the trial config has none
    if isinstance(seeds, (list, tuple)) and seeds and all(_is_number(s) for s in seeds):
        return [int(s) for s in seeds]
    single = trial.config.get("seed", _get(settings.get("base_config"), "seed"))
    return [int(single)] if _is_number(single) else []


def _param_value(value: Any) -> Any:
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def _summarise(
    series: list[float], mode: str, fallback: Mapping[str, Any] | None
) -> tuple[float, float]:
    """(final, best) of one metric's per-epoch values; ``fallback`` is Tune's metric_analysis."""
    values = np.asarray(series, dtype=float)
    finite = values[~np.isnan(values)]
    final = float(finite[-1]) if finite.size else math.nan
    best = (
        (float(finite.max()) if mode == "max" else float(finite.min())) if finite.size else math.nan
    )
    if fallback:
        extra = fallback.get(mode)
        if _is_number(extra) and not math.isnan(float(extra)):
            best = (
                float(extra)
                if math.isnan(best)
                else (max(best, float(extra)) if mode == "max" else min(best, float(extra)))
            )
    return final, best


def _trial_rows(
    exp: _Experiment, trial: _Trial, modes: Mapping[str, str] | None
) -> list[dict[str, Any]]:
    settings = exp.settings
    base = settings.get("base_config") if isinstance(settings.get("base_config"), Mapping) else {}
    config = trial.config
    epochs = max((_epoch_of(r, i) for i, r in enumerate(trial.results, 1)), default=0)
    status = _status(trial, epochs, _configured_epochs(settings, config))
    error = None
    if status == "errored":
        text = None
        if trial.logdir:
            for fname in dict.fromkeys([trial.error_filename or "error.txt", "error.txt"]):
                text = exp.loc.read_text(exp.loc.join(trial.logdir, fname))
                if text:
                    break
        error = _first_error_line(text) or "error (no error.txt found)"
    last = trial.results[-1] if trial.results else {}
    wall = last.get("time_total_s", trial.last_result.get("time_total_s"))

    split = [_split_metrics(r) for r in trial.results]
    seed_keys = sorted({s for _, per_seed in split for s in per_seed})
    seeds = _seeds_of(trial, settings)
    row_seeds: list[int | None]
    if seed_keys:
        row_seeds = list(dict.fromkeys([*seeds, *seed_keys]))
    else:
        row_seeds = [seeds[0] if len(seeds) == 1 else None]
    seed_metrics = sorted({m for _, per_seed in split for d in per_seed.values() for m in d})
    trial_metrics = sorted({m for tl, _ in split for m in tl})

    def mode_of(metric: str) -> str:
        return metric_mode(
            metric,
            search_metric=settings.get("metric"),
            search_mode=settings.get("mode"),
            modes=modes,
        )

    common: dict[str, Any] = {
        "experiment": exp.name,
        "trial_id": trial.trial_id,
        "status": status,
        "error": error,
        "task": config.get("task.name", _get(base, "task.name")),
        "model": config.get("model.name_or_path", _get(base, "model.name_or_path")),
        "loss": _loss_family(_get(base, "loss"), config),
        "epochs": int(epochs),
        "wall_s": float(wall) if _is_number(wall) else math.nan,
        "start_time": trial.start_time,
    }
    for key, value in config.items():
        if key not in _NOT_PARAMS:
            common[f"param.{key}"] = _param_value(value)

    rows = []
    for seed in row_seeds:
        row = dict(common, seed=seed)
        for metric in sorted(set(trial_metrics) | set(seed_metrics)):
            per_seed = seed is not None and metric in seed_metrics and bool(seed_keys)
            if per_seed:
                series = [ps.get(seed, {}).get(metric, math.nan) for _, ps in split]
                key = f"seed{seed}/{metric}"
            else:
                series = [tl.get(metric, math.nan) for tl, _ in split]
                key = metric
            mode = mode_of(metric)
            fallback = trial.metric_analysis.get(key) if trial.results_patched else None
            row[f"final.{metric}"], row[f"best.{metric}"] = _summarise(series, mode, fallback)
        rows.append(row)
    return rows


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
        if len(present) and all(_is_number(v) for v in present):
            whole = len(present) == len(values) and all(isinstance(v, int) for v in present)
            frame[col] = pd.to_numeric(values, errors="coerce").astype("int64" if whole else float)
        else:
            frame[col] = values.map(lambda v: None if v is None or v is pd.NA else str(v)).astype(
                object
            )
    return frame


def load_trials(
    paths: str | PathLike[str] | Sequence[str | PathLike[str]],
    *,
    modes: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """One row per training run (trial x seed) of one or more Ray Tune experiments.

    Args:
        paths: experiment directories or storage URIs (``s3://bucket/exp``); each must hold an
            ``experiment_state-*.json``, else :class:`~lossearch.errors.LossearchError`
            ``"not a Ray Tune experiment: PATH"``.
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
    rows: list[dict[str, Any]] = []
    for exp in _read_experiments(paths):
        skipped, running = [], []
        for trial in exp.trials:
            if trial.tune_status not in ("TERMINATED", "ERROR"):
                if not trial.results:
                    skipped.append(trial.trial_id)
                    continue
                running.append(trial.trial_id)
            rows.extend(_trial_rows(exp, trial, modes))
        if skipped or running:
            warnings.warn(
                f"{exp.loc.display}: experiment not finished: {len(running)} running trial(s) "
                f"loaded with partial results, {len(skipped)} without results skipped",
                PartialExperimentWarning,
                stacklevel=2,
            )
    frame = _order_columns(pd.DataFrame(rows))
    frame = _tidy_params(frame)
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


def load_history(paths: str | PathLike[str] | Sequence[str | PathLike[str]]) -> pd.DataFrame:
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
    rows: list[tuple[Any, ...]] = []
    for exp in _read_experiments(paths):
        for trial in exp.trials:
            for i, result in enumerate(trial.results, start=1):
                epoch = _epoch_of(result, i)
                trial_level, per_seed = _split_metrics(result)
                for metric, value in trial_level.items():
                    rows.append((exp.name, trial.trial_id, None, epoch, metric, value))
                for seed, metrics in per_seed.items():
                    for metric, value in metrics.items():
                        rows.append((exp.name, trial.trial_id, seed, epoch, metric, value))
    frame = pd.DataFrame(rows, columns=HISTORY_COLUMNS)
    frame["seed"] = pd.array(list(frame["seed"]), dtype="Int64")
    frame["epoch"] = frame["epoch"].astype("int64")
    frame["value"] = frame["value"].astype(float)
    return frame.sort_values(["experiment", "trial_id", "epoch", "metric", "seed"]).reset_index(
        drop=True
    )
