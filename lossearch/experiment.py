"""The experiment directory: its layout, and the metadata file that describes a search.

An experiment is ``<storage>/<name>/`` (a local folder or a URI)::

    lossearch_search.yaml    SearchMeta: what resume, confirm, export and analysis need
    optuna_journal.log       the search's Optuna study (lossearch.search.study)
    trainings/<trial_id>/    each trial's checkpoints (lossearch.search.trial)
    confirm/                 the confirm stage (lossearch.search.confirm)
    tracking/                the trackers' files (lossearch.tracking)
    best.yaml, analysis/     written by the search's report and by ``lossearch analyze``
    experiment_state-*.json, tuner.pkl, run_trial_<id>_*/ ...   Ray Tune's own files

Every module finds these names here, and reads and writes ``lossearch_search.yaml`` through
:func:`read_meta` / :func:`write_meta`, which check it against :class:`SearchMeta`.
"""

from __future__ import annotations

from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from lossearch.config import validate_as
from lossearch.errors import LossearchError
from lossearch.storage import join_uri, read_text, write_text

SEARCH_FILE = "lossearch_search.yaml"
TRAININGS_DIR = "trainings"
CONFIRM_DIR = "confirm"
TRACKING_DIR = "tracking"
JOURNAL_FILE = "optuna_journal.log"


class AshaSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_period: int = Field(default=1, ge=1)
    reduction_factor: float = Field(default=2.0, gt=1)


class SearchMeta(BaseModel):
    """``lossearch_search.yaml``, written by ``lossearch search`` before the first trial.

    ``space`` is the search-space file as a mapping and ``base_config`` the resolved
    training config every trial starts from. The settings below them are the search's
    resolved command line. Defaults are what an experiment written by an earlier release
    (which lacked the key) meant.
    """

    model_config = ConfigDict(extra="forbid")

    space: dict[str, Any]
    base_config: dict[str, Any]
    metric: str = "exact_match"
    mode: Literal["max", "min"] = "max"
    num_seeds: int = Field(default=1, ge=1)
    seeds: list[int] = Field(default_factory=lambda: [0])
    num_samples: int | None = Field(default=None, ge=1)
    max_concurrent: int = Field(default=2, ge=1)
    scheduler: Literal["asha", "fifo"] = "asha"
    asha: AshaSettings = Field(default_factory=AshaSettings)
    max_failures: int = Field(default=0, ge=0)
    sampler_seed: int = 0
    # the command line's key=value overrides of the base config
    overrides: list[str] | dict[str, Any] = Field(default_factory=list)
    # trials per loss family (equal budgets), or None
    per_family: int | None = None
    # {family: [low, high] of optim.lr, or None where the space does not search it}
    lr_range: dict[str, list[float] | None] = Field(default_factory=dict)
    # the persistent Optuna study (lossearch.search.study)
    study_name: str | None = None
    optuna_storage: str | None = None
    warm_start: list[str] = Field(default_factory=list)
    # what is kept of the trials' checkpoints when the search ends (lossearch.search.retention)
    keep: Literal["best", "all", "none"] = "all"
    # the trackers each trial logs to (--log-to; lossearch.tracking)
    log_to: list[str] = Field(default_factory=list)


def default_mode(metric: str) -> str:
    """The direction in which ``metric`` is better when nobody said: ``min`` for a name
    starting with ``loss`` (``loss``, ``loss.ce``, ...), else ``max``."""
    return "min" if metric.startswith("loss") else "max"


def check_mode(mode: str) -> str:
    """``mode`` when it is ``max`` or ``min`` (which way a metric is better), else a one-line
    :class:`~lossearch.errors.LossearchError`."""
    if mode not in ("max", "min"):
        raise LossearchError(f"mode must be 'max' or 'min', got '{mode}'")
    return mode


def write_meta(exp: str, meta: SearchMeta | dict[str, Any]) -> None:
    """Write ``lossearch_search.yaml`` into ``exp`` (local or URI; atomically where local)."""
    checked = meta if isinstance(meta, SearchMeta) else validate_as(SearchMeta, meta)
    write_text(exp, SEARCH_FILE, yaml.safe_dump(checked.model_dump(), sort_keys=False))


def read_meta(exp: str) -> dict[str, Any]:
    """The checked ``lossearch_search.yaml`` of ``exp`` as a plain mapping (every key of
    :class:`SearchMeta` present); a one-line error when it is missing or malformed."""
    try:
        text = read_text(exp, SEARCH_FILE)
    except OSError:
        raise LossearchError(f"not a lossearch experiment (no {SEARCH_FILE}): {exp}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        first = str(err).strip().splitlines()[0]
        raise LossearchError(f"{exp}: malformed {SEARCH_FILE}: {first}") from None
    if not isinstance(raw, dict):
        raise LossearchError(f"{exp}: malformed {SEARCH_FILE}: not a mapping")
    try:
        return validate_as(SearchMeta, raw).model_dump()
    except LossearchError as err:
        raise LossearchError(f"{exp}/{SEARCH_FILE}: {err}") from None


def trainings_path(exp: str) -> str:
    """Where the trials' checkpoints live: ``<exp>/trainings`` (one folder per trial id)."""
    return join_uri(exp, TRAININGS_DIR)


def confirm_path(exp: str) -> str:
    """The confirm stage's folder: ``<exp>/confirm``."""
    return join_uri(exp, CONFIRM_DIR)
