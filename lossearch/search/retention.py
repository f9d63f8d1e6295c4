"""What is kept of the search trials' checkpoints once a search ends: ``--keep best|all|none``.

Every trial keeps its newest two checkpoints under ``<exp>/trainings/<trial_id>/`` while it
trains (:mod:`lossearch.search.trial`), so that a restarted trial resumes from its last
finished epoch. Once a trial has ended (finished, pruned by ASHA, or errored: ``lossearch
resume`` restarts none of them) only ``lossearch export --model`` reads its final checkpoint
again, and only the winner's. When the search (or its resume) finishes, :func:`apply_keep`
deletes the folders of ended trials:

- ``all``: none deleted (every trial keeps its last checkpoints, as before ``--keep``);
- ``best``: all but the best finished trial of each loss family, by the rule of
  :func:`lossearch.search.export.best_configs` with ``per_loss=True``, so that ``export
  --model`` (the best trial of all, which is its family's best) and per-family inspection
  still work;
- ``none``: every ended trial's.

A trial that has not ended (running, paused or pending when the driver died) is never
touched: it resumes from its checkpoint. ``lossearch confirm``'s runs
(``<exp>/confirm/runs/``) are not search trials and always keep their final checkpoints.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lossearch.errors import LossearchError
from lossearch.experiment import trainings_path
from lossearch.storage import is_uri, remove_dir

if TYPE_CHECKING:
    import pandas as pd

KEEP_MODES = ("best", "all", "none")
DEFAULT_KEEP = "best"
"""What a new search keeps: the best trial of each family (``export --model`` works)."""
ENDED = ("finished", "pruned", "errored")


def check_keep(keep: str) -> str:
    """``keep`` if it is one of :data:`KEEP_MODES`, else a one-line ``LossearchError``."""
    if keep not in KEEP_MODES:
        raise LossearchError(f"--keep must be best, all or none, got {keep!r}")
    return keep


@dataclass
class Retention:
    """What :func:`apply_keep` did; ``line()`` says it in one line."""

    keep: str
    kept: list[str] = field(default_factory=list)  # ended trials whose checkpoints stay
    freed: list[str] = field(default_factory=list)  # ended trials whose checkpoints went
    unfinished: list[str] = field(default_factory=list)  # not ended: kept for resume
    kept_bytes: int = 0
    freed_bytes: int = 0

    def line(self) -> str:
        why = {"best": " (best per family)", "all": " (--keep all)", "none": ""}[self.keep]
        parts = []
        if self.kept or self.keep != "none":
            parts.append(f"kept {_trials(self.kept)}{why}, {human_size(self.kept_bytes)}")
        if self.keep != "all":
            parts.append(f"freed {_trials(self.freed)}, {human_size(self.freed_bytes)}")
        if self.unfinished:
            parts.append(f"kept {_trials(self.unfinished, 'unfinished ')} for resume")
        return "checkpoints: " + "; ".join(parts)


def _trials(ids: list[str], which: str = "") -> str:
    return f"{len(ids)} {which}trial" + ("'s" if len(ids) == 1 else "s'")


def human_size(n: int) -> str:
    """Bytes as ``3.1 MB`` (powers of 1000: what ``du --si`` and object stores show)."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def folder_sizes(folder: str) -> dict[str, int]:
    """Bytes under each direct subfolder of ``folder`` (a local path or a URI); {} if absent."""
    sizes: dict[str, int] = {}
    if not is_uri(folder):
        root = Path(folder)
        if not root.is_dir():
            return {}
        for sub in root.iterdir():
            if sub.is_dir():
                sizes[sub.name] = sum(
                    os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(sub) for f in fs
                )
        return sizes
    import pyarrow.fs as pafs

    fs, root_path = pafs.FileSystem.from_uri(folder)
    prefix = root_path.rstrip("/") + "/"
    for info in fs.get_file_info(pafs.FileSelector(prefix, allow_not_found=True, recursive=True)):
        name, nested, _ = info.path[len(prefix):].partition("/")
        if nested:  # under a subfolder
            size = (info.size or 0) if info.type == pafs.FileType.File else 0
            sizes[name] = sizes.get(name, 0) + size
    return sizes


def _best_per_family(exp: str, trials: pd.DataFrame) -> set[str]:
    """Trial ids of the best finished trial of each family (none when no trial finished)."""
    from lossearch.search.export import best_configs

    try:
        return {entry["trial_id"] for entry in best_configs(exp, per_loss=True, trials=trials)}
    except LossearchError:  # no finished trial with a value: no best to keep
        return set()


def plan_keep(exp: str, keep: str) -> tuple[list[str], list[str], list[str]]:
    """``(kept, freed, unfinished)``: trial ids of ``exp`` by what ``keep`` does to them.

    Only trials that have a folder under ``trainings/`` are listed. A trial Tune has not
    ended, or one without results yet (:func:`analysis.load_trials` leaves it out), is
    ``unfinished`` whatever ``keep`` says. The trials frame is read here (its
    partial-experiment warnings silenced: the unfinished trials stay) and the best of each
    family picked from it.
    """
    check_keep(keep)
    return _plan(exp, keep, set(folder_sizes(trainings_path(exp))))


def _plan(exp: str, keep: str, present: set[str]) -> tuple[list[str], list[str], list[str]]:
    """:func:`plan_keep` for the trial folders ``present`` (listed by the caller)."""
    from analysis import load_trials
    from analysis.load import PartialExperimentWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PartialExperimentWarning)
        trials = load_trials([exp])
    best = _best_per_family(exp, trials) if keep == "best" else set()
    per_trial = trials.drop_duplicates("trial_id")
    status = dict(zip(per_trial["trial_id"], per_trial["status"], strict=True))
    ended = sorted(t for t in present if status.get(t) in ENDED)
    unfinished = sorted(present - set(ended))
    if keep == "all":
        return ended, [], unfinished
    return [t for t in ended if t in best], [t for t in ended if t not in best], unfinished


def apply_keep(exp: str, keep: str) -> Retention:
    """Delete the checkpoint folders ``keep`` does not keep (see the module docstring)."""
    check_keep(keep)
    trainings = trainings_path(exp)
    sizes = folder_sizes(trainings)  # listed once: the plan and the sizes reported
    kept, freed, unfinished = _plan(exp, keep, set(sizes))
    for trial_id in freed:
        remove_dir(trainings, trial_id)
    return Retention(
        keep=keep,
        kept=kept,
        freed=freed,
        unfinished=unfinished,
        kept_bytes=sum(sizes.get(t, 0) for t in kept),
        freed_bytes=sum(sizes.get(t, 0) for t in freed),
    )


def after_search(exp: str, keep: str) -> str:
    """What the search driver calls when a search or its resume has finished: apply
    ``keep`` (the metadata's; ``all`` for an experiment from before ``--keep``, see
    :class:`lossearch.experiment.SearchMeta`) and return the one line to print. A failure to
    read or delete is that line, never an exception: the search itself has finished and its
    results are safe.
    """
    try:
        return apply_keep(exp, keep).line()
    except (OSError, LossearchError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        return f"checkpoints: not cleaned up (--keep {keep}): {first}"
