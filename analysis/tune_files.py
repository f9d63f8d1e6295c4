"""Ray Tune's own files in an experiment directory, read without Ray (nor importing it).

What is read, from an experiment's :class:`~analysis.location.Location`:

* the trial table from the newest readable ``experiment_state-*.json``: ``trial_data[i] =
  [trial_json, runtime_json]`` (each a JSON string), of which :class:`TrialJson` and
  :class:`TrialRuntime` keep what the frames need; when the newest file cannot be parsed
  (being written), the one before it, with a :class:`PartialExperimentWarning`;
* the per-epoch results from each trial's ``result.json`` (JSON lines, :class:`TuneResult`);
  when that file is missing, empty or truncated (Tune truncates it on some restores), the
  epoch it lacks at the end is filled from ``last_result``;
* the error of an errored trial from its ``error.txt``.

Only plain JSON is read: the cloudpickled objects Tune also keeps in the state file are never
unpickled. Why this module and not ``ray.tune.ExperimentAnalysis``: ``docs/CONTRACTS.md``,
"Analysis".
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Annotated, Any

import pyarrow.fs as pafs
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Json,
    ValidationError,
    model_validator,
)

from analysis.location import Location
from analysis.records import is_number
from lossearch.config import flatten
from lossearch.errors import LossearchError

#: Ray Tune's file names in an experiment directory and in each trial's directory.
STATE_PREFIX, STATE_SUFFIX = "experiment_state-", ".json"
RESULT_FILE = "result.json"
ERROR_FILE = "error.txt"

#: Keys Tune adds to every result: bookkeeping, not metrics. Ray's own list
#: (``ray.tune.result.AUTO_RESULT_KEYS``) plus what Tune and lossearch's trials add; kept here
#: because analysis imports no Ray, and checked against Ray's by tests/test_ray_internals.py.
TUNE_KEYS = frozenset(
    {
        "episodes_total",
        "timesteps_total",
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
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class PartialExperimentWarning(UserWarning):
    """An experiment was loaded with trials missing, still running or with truncated results."""


# --------------------------------------------------------------------------- the files' models

#: A number, or None where the file has none (or something else: a string, a bool).
Number = Annotated[float | None, BeforeValidator(lambda v: v if is_number(v) else None)]
#: A JSON object, or {} where the file has none (or something else).
Record = Annotated[dict[str, Any], BeforeValidator(lambda v: v if isinstance(v, dict) else {})]


class TrialJson(BaseModel):
    """What is read of a trial's JSON state (``Trial.get_json_state()``): its id, Tune status
    (``TERMINATED``, ``ERROR``, ``RUNNING``, ``PENDING``, ``PAUSED``), config and directory."""

    trial_id: str = Field(min_length=1)
    status: Annotated[str, BeforeValidator(lambda v: str(v or "").upper())] = ""
    config: Record = Field(default_factory=dict)
    relative_logdir: str | None = None


class TrialRuntime(BaseModel):
    """What is read of a trial's run metadata: the last result, Tune's running min/max/last
    of each metric (``metric_analysis``), the error file's name and the start time."""

    last_result: Record = Field(default_factory=dict)
    metric_analysis: Annotated[
        dict[str, Record], BeforeValidator(lambda v: v if isinstance(v, dict) else {})
    ] = Field(default_factory=dict)
    error_filename: str | None = None
    start_time: Number = None


class StateEntry(BaseModel):
    """One ``trial_data`` pair; each half a JSON string (or, from older writers, an object)."""

    trial: Json[TrialJson] | TrialJson
    runtime: Json[TrialRuntime] | TrialRuntime = Field(default_factory=TrialRuntime)

    @model_validator(mode="before")
    @classmethod
    def _from_pair(cls, data: Any) -> Any:
        if isinstance(data, (list, tuple)) and data:
            return {"trial": data[0], **({"runtime": data[1]} if len(data) > 1 else {})}
        return data


class ExperimentState(BaseModel):
    """An ``experiment_state-*.json``: its ``trial_data`` list (entries checked one by one)."""

    trial_data: list[Any]

    def entries(self) -> tuple[list[StateEntry], int]:
        """The readable trial entries, in Tune's order, and how many were not readable."""
        good, bad = [], 0
        for raw in self.trial_data:
            try:
                good.append(StateEntry.model_validate(raw))
            except ValidationError:
                bad += 1
        return good, bad


class TuneResult(BaseModel):
    """One reported result: a line of ``result.json``, or ``last_result``. Every key is kept
    (extra fields); the bookkeeping keys the frames use are typed."""

    model_config = ConfigDict(extra="allow")

    epoch: Number = None
    training_iteration: Number = None
    time_total_s: Number = None

    def number(self, fallback: int) -> int:
        """The result's epoch: ``epoch``, else ``training_iteration``, else ``fallback``."""
        for value in (self.epoch, self.training_iteration):
            if value is not None:
                return int(value)
        return fallback

    def reported(self) -> dict[str, Any]:
        """The keys the trainable reported (Tune's :data:`TUNE_KEYS` left out), nested
        mappings flattened with ``/``."""
        extra = self.model_extra or {}
        return flatten({k: v for k, v in extra.items() if k not in TUNE_KEYS}, sep="/")


# --------------------------------------------------------------------------- reading


@dataclass
class TuneTrial:
    """A trial as the files tell it: the state entry, its flat config, directory, results.

    ``results`` has one :class:`TuneResult` per epoch in epoch order (a redone epoch's last
    report wins); ``patched`` is True when its last one came from ``last_result`` because
    ``result.json`` lacked it. ``error`` is the text of ``error.txt`` of a Tune ``ERROR``
    trial (None when unreadable; None for other trials).
    """

    trial_id: str
    status: str
    config: dict[str, Any]
    logdir: str | None
    runtime: TrialRuntime
    results: list[TuneResult]
    patched: bool
    error: str | None


def _warn(loc: Location, message: str) -> None:
    warnings.warn(f"{loc.display}: {message}", PartialExperimentWarning, stacklevel=4)


def state_files(loc: Location) -> list[str]:
    """The ``experiment_state-*.json`` paths of ``loc``, newest first (the timestamp in the
    name sorts chronologically)."""
    names = [
        info.path
        for info in loc.listdir()
        if info.type == pafs.FileType.File
        and info.base_name.startswith(STATE_PREFIX)
        and info.base_name.endswith(STATE_SUFFIX)
    ]
    return sorted(names, key=lambda p: p.rsplit("/", 1)[-1], reverse=True)


def read_state(loc: Location) -> ExperimentState:
    """The newest readable experiment state (a warning when an older one had to serve).

    Raises:
        LossearchError: ``"not a Ray Tune experiment: PATH"`` (no state file), or no state
            file could be read.
    """
    files = state_files(loc)
    if not files:
        raise LossearchError(f"not a Ray Tune experiment: {loc.display}")
    for i, path in enumerate(files):
        try:
            state = ExperimentState.model_validate_json(loc.read_text(path) or "")
        except ValidationError:
            continue
        if i:
            _warn(
                loc,
                "newest experiment state is unreadable (being written?); "
                f"using {path.rsplit('/', 1)[-1]}",
            )
        return state
    raise LossearchError(f"{loc.display}: no readable experiment_state-*.json")


def read_results(loc: Location, logdir: str | None) -> list[TuneResult] | None:
    """The results in ``logdir/result.json``, one per epoch in epoch order (the last report
    of an epoch wins: a redone epoch after a restore); lines cut short by a crash are left
    out. None when there is no such file."""
    text = loc.read_text(loc.join(logdir, RESULT_FILE)) if logdir else None
    if text is None:
        return None
    parsed = []
    for line in filter(None, map(str.strip, text.splitlines())):
        try:
            parsed.append(TuneResult.model_validate_json(line))
        except ValidationError:
            continue  # a line cut short, or not a JSON object
    by_epoch = {result.number(i): result for i, result in enumerate(parsed, start=1)}
    return [by_epoch[e] for e in sorted(by_epoch)]


def first_error_line(text: str | None) -> str | None:
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
        if ln and not ln[0].isspace() and not ln.startswith("Traceback"):
            return ln
    for ln in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b", ln):
            return ln
    return next((ln.strip() for ln in lines if ln.strip()), None)


def _find_logdir(loc: Location, trial_id: str) -> str | None:
    for info in loc.listdir():
        if info.type == pafs.FileType.Directory and f"_{trial_id}_" in info.base_name:
            return info.base_name
    return None


def _error_text(loc: Location, logdir: str | None, runtime: TrialRuntime) -> str | None:
    if not logdir:
        return None
    for name in dict.fromkeys([runtime.error_filename or ERROR_FILE, ERROR_FILE]):
        text = loc.read_text(loc.join(logdir, name))
        if text:
            return text
    return None


def _trial(loc: Location, entry: StateEntry) -> tuple[TuneTrial, bool]:
    """The trial of one state entry, and whether its ``result.json`` was missing."""
    tj, runtime = entry.trial, entry.runtime
    logdir = tj.relative_logdir or _find_logdir(loc, tj.trial_id)
    found = read_results(loc, logdir)
    results = found or []
    patched = False
    last = TuneResult.model_validate(runtime.last_result)
    # a trial that failed before its first report has a last_result of Tune's keys alone
    # ({"trial_id": ...}): nothing to fill in
    if last.reported():
        if not results or last.number(len(results)) > results[-1].number(len(results)):
            results.append(last)
            patched = True
    trial = TuneTrial(
        trial_id=tj.trial_id,
        status=tj.status,
        config=flatten(tj.config, sep="."),
        logdir=logdir,
        runtime=runtime,
        results=results,
        patched=patched,
        error=_error_text(loc, logdir, runtime) if tj.status == "ERROR" else None,
    )
    return trial, found is None and tj.status != "PENDING"


def read_trials(loc: Location, state: ExperimentState) -> list[TuneTrial]:
    """Every readable trial of ``state`` with its results, in Tune's order.

    Warns (:class:`PartialExperimentWarning`) about entries that could not be read, trials
    without a ``result.json`` and trials whose results were filled in from the state.
    """
    entries, unreadable = state.entries()
    if unreadable:
        _warn(loc, f"{unreadable} trial entr{'y' if unreadable == 1 else 'ies'} unreadable")
    trials, missing = [], []
    for entry in entries:
        trial, no_file = _trial(loc, entry)
        trials.append(trial)
        if no_file:
            missing.append(trial.trial_id)
    if missing:
        _warn(loc, f"no result.json for trial(s) {', '.join(missing)}")
    patched = [t.trial_id for t in trials if t.patched]
    if patched:
        _warn(
            loc,
            f"result.json incomplete for trial(s) {', '.join(patched)}; "
            "filled in from the experiment state (per-epoch history has gaps)",
        )
    return trials
