"""The search's persistent Optuna study, and warm starts from earlier experiments.

Every search records its trials in an Optuna study named after the experiment, in Optuna's
journal file ``optuna_journal.log`` in the experiment directory (or in the RDB storage that
``--optuna-storage URL`` names), so that ``optuna-dashboard`` opens it and
``optuna.load_study(study_name=..., storage=...)`` reads it (:func:`load_study` does both
steps). Each finished trial is one Optuna trial: its parameters and distributions, the
metric's per-epoch values as intermediate values, its value (the trial's final metric) and
state (``COMPLETE``; ``PRUNED`` when ASHA stopped it early; ``FAIL`` when it errored or its
value is not finite), and user attributes ``ray_trial_id``, ``seeds`` and ``experiment``.

Why a record of finished trials, not the searcher's own study
    Ray Tune's ``OptunaSearch`` takes a ``storage`` and ``study_name`` (Ray 2.60), but it
    checkpoints its study by pickling it with the experiment state, and restores it from that
    pickle on ``lossearch resume``. A study in persistent storage then runs ahead of the
    restored searcher: trials asked after Tune's last experiment checkpoint stay ``RUNNING``
    forever (orphans), counted by the per-family sampler's budgets (which count trials in
    any state) and by TPE's constant liar; trials finished after that checkpoint are told
    twice. Ray's searcher also tells an ASHA-stopped trial ``COMPLETE``. So the searcher
    keeps its in-memory study (checkpointed and resumed exactly as before), and
    :class:`RecordingOptunaSearch` (a subclass of ``OptunaSearch``) records each trial into
    the persistent study once, when Tune reports it complete or errored: one
    ``optuna.trial.create_trial`` + ``Study.add_trial`` with the parameters and
    distributions of the searcher's own Optuna trial. A trial already recorded under its Ray
    trial id is skipped, so a resumed search that finishes a trial again does not duplicate
    it, and no trial of the persistent study is ever left running. A subclass rather than a
    Tune ``Callback``: the searcher holds the trial's exact Optuna parameters and
    distributions, and it is pickled with Tune's state, so resuming needs no new wiring.
    Trials show in the study when they finish, not while they run.

Warm starts (``lossearch search --warm-start EXP ...``)
    :func:`warm_start` reads the earlier experiments' trials with
    :func:`analysis.load_trials`, replays each trial's flat config through this space's
    define-by-run function (an ``optuna.trial.FixedTrial``) to get its parameters and
    distributions, and makes a ``FrozenTrial`` of it (``create_trial``: finished trials
    ``COMPLETE`` with their final metric, averaged over seeds; pruned ones ``PRUNED`` with
    their last value as intermediate value; errored ones ``FAIL``). These are added with
    ``Study.add_trials`` to the searcher's study (the sampler learns from them, as if they
    had run in this search) and to the persistent study. ``add_trials``, not
    ``enqueue_trial``: an enqueued trial is a configuration to *run*, whereas these are
    already measured. Under a grid, the points measured (finished or pruned) are not run
    again: the remaining points are enqueued, and ``num_samples`` defaults to their number;
    errored points are not measurements, and run again. ``first_points`` that an earlier
    trial matches are dropped. Warm-started trials carry the user attribute ``warm_start``
    and do not count toward ``per_family``: the new search runs N new trials of every family
    (:class:`FreshFamilyBudget`), while each family's sampler learns from the earlier trials
    too. The spaces must be the same (:func:`space_difference`): the same searched and fixed
    parameters with the same distributions, and the same metric and mode; the base config
    may differ (for example fewer epochs), and its values are then taken as they are.
"""

from __future__ import annotations

import hashlib
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from ray.tune.search.optuna import OptunaSearch

from lossearch.errors import LossearchError
from lossearch.experiment import JOURNAL_FILE
from lossearch.search.samplers import PerFamilySampler
from lossearch.search.trial_config import FAMILY_KEY, GRID_KEY
from lossearch.storage import absolute_path, is_uri, read_text, write_text

WARM_ATTR = "warm_start"


# --------------------------------------------------------------------------- storage


def _journal_path(exp_path: str) -> Path:
    """The local journal file of an experiment (a URI experiment: a local copy, uploaded)."""
    if not is_uri(exp_path):
        return Path(exp_path) / JOURNAL_FILE
    digest = hashlib.sha1(exp_path.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "lossearch-optuna" / digest / JOURNAL_FILE


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def open_storage(exp_path: str, url: str | None) -> optuna.storages.BaseStorage:
    """The study's storage: the RDB at ``url``, else the experiment's journal file.

    Under a URI experiment the journal is a local copy of ``<exp>/optuna_journal.log``,
    downloaded here when there is one (see :meth:`StudyRecorder.record`).
    """
    if url:
        try:
            return optuna.storages.RDBStorage(url)
        except Exception as err:  # noqa: BLE001 -- a bad URL, driver or server: one line
            raise LossearchError(f"--optuna-storage {url}: {_first_line(err)}") from None
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = _journal_path(exp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_uri(exp_path):
        try:
            path.write_text(read_text(exp_path, JOURNAL_FILE))
        except OSError:
            path.unlink(missing_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def check_storage(url: str, study_name: str) -> None:
    """``--optuna-storage``: reachable, and no study named ``study_name`` in it yet."""
    if "://" not in url:
        raise LossearchError(
            f"--optuna-storage must be a database URL (sqlite:///path.db, postgresql://...), "
            f"got '{url}'"
        )
    storage = open_storage("", url)
    try:
        names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    except Exception as err:  # noqa: BLE001
        raise LossearchError(f"--optuna-storage {url}: {_first_line(err)}") from None
    if study_name in names:
        raise LossearchError(
            f"--optuna-storage {url}: a study named '{study_name}' exists already "
            "(use another --name)"
        )


def load_study(exp_path: str) -> optuna.Study:
    """The experiment's persistent study (read-only use: ``study.trials``, a dataframe)."""
    from lossearch.experiment import read_meta

    meta = read_meta(exp_path)
    if "study_name" not in meta:
        raise LossearchError(f"experiment has no Optuna study (made before studies): {exp_path}")
    storage = open_storage(exp_path, meta.get("optuna_storage"))
    return optuna.load_study(study_name=meta["study_name"], storage=storage)


# --------------------------------------------------------------------------- recording


def _key(t: FrozenTrial) -> tuple[Any, Any]:
    return t.user_attrs.get("experiment"), t.user_attrs.get("ray_trial_id")


class StudyRecorder:
    """Adds finished trials to the persistent study, once each (picklable: it keeps only
    where the study is, and opens it again after unpickling)."""

    def __init__(self, exp_path: str, meta: dict[str, Any]) -> None:
        self.exp_path = exp_path
        self.url = meta.get("optuna_storage")
        # experiments made before studies existed: the experiment's name
        self.study_name = meta.get("study_name") or exp_path.partition("?")[0].rstrip("/")
        self.study_name = self.study_name.rsplit("/", 1)[-1]
        self.direction = "minimize" if meta["mode"] == "min" else "maximize"
        self.metric = meta["metric"]
        self.seeds = list(meta["seeds"])
        self.epochs = int(meta["base_config"]["optim"]["epochs"])
        self._study: optuna.Study | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_study": None}

    def study(self) -> optuna.Study:
        if self._study is None:
            storage = open_storage(self.exp_path, self.url)
            self._study = optuna.create_study(
                storage=storage,
                study_name=self.study_name,
                direction=self.direction,
                load_if_exists=True,
            )
        return self._study

    def ensure(self, warm: Sequence[FrozenTrial]) -> None:
        """Create the study (metric and experiment as study attributes) and add the
        warm-start trials it lacks."""
        study = self.study()
        study.set_user_attr("metric", self.metric)
        study.set_user_attr("experiment", self.exp_path)
        self._add(list(warm))

    def _add(self, trials: list[FrozenTrial]) -> None:
        study = self.study()
        have = {_key(t) for t in study.get_trials(deepcopy=False)}
        new = [t for t in trials if _key(t) not in have]
        if new:
            study.add_trials(new)
        if is_uri(self.exp_path):  # also when nothing is new: the first call uploads the study
            write_text(self.exp_path, JOURNAL_FILE, _journal_path(self.exp_path).read_text())

    def record(
        self, trial_id: str, ot_trial: FrozenTrial, result: dict[str, Any] | None, error: bool
    ) -> None:
        """Record a trial that Tune reported complete (``result``) or errored (``error``)."""
        if not error and not result:
            return  # removed before it ran
        result = result or {}
        value = None if error else result.get(self.metric)
        steps = {k: v for k, v in ot_trial.intermediate_values.items() if _finite(v)}
        if _finite(value):  # Ray's searcher does not see the result that stops a trial
            steps[int(result.get("training_iteration", len(steps) + 1))] = value
        # Tune marks the result that ASHA stops a trial at "done" too: count the epochs, as
        # analysis.load_trials does (config keys come flattened with "/")
        epochs = int(result.get("config/optim.epochs", self.epochs))
        if error or not _finite(value):
            state, value = TrialState.FAIL, None
        elif result.get("epoch", 0) >= epochs:
            state = TrialState.COMPLETE
        else:
            state, value = TrialState.PRUNED, None
        frozen = optuna.trial.create_trial(
            state=state,
            value=value,
            params=ot_trial.params,
            distributions=ot_trial.distributions,
            intermediate_values=steps,
            user_attrs={
                "ray_trial_id": trial_id,
                "seeds": self.seeds,
                "experiment": self.exp_path,
            },
        )
        self._add([frozen])


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class RecordingOptunaSearch(OptunaSearch):
    """Ray Tune's ``OptunaSearch`` that also records each finished trial in the persistent
    study (see the module docstring), and whose study starts with the ``warm`` trials."""

    def __init__(
        self,
        *args: Any,
        recorder: StudyRecorder | None,
        warm: Sequence[FrozenTrial] = (),
        **kw: Any,
    ) -> None:
        from lossearch.ray_internals import optuna_study

        super().__init__(*args, **kw)
        self._recorder = recorder
        if warm:
            optuna_study(self).add_trials(list(warm))

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        from lossearch.ray_internals import optuna_told, optuna_trial

        again = optuna_told(self, trial_id)
        super().on_trial_complete(trial_id, result=result, error=error)
        ot_trial = None if again or self._recorder is None else optuna_trial(self, trial_id)
        if ot_trial is not None:
            self._recorder.record(trial_id, ot_trial, result, error)


class FreshFamilyBudget(PerFamilySampler):
    """:class:`PerFamilySampler` whose budgets count only this search's trials: the
    warm-started ones are left out when a trial's family is assigned (each family's sampler
    still learns from them)."""

    def family_for(self, study: Any, trial: Any) -> str:
        return super().family_for(_NewTrials(study), trial)


class _NewTrials:
    """A view of a study without its warm-started trials (for :class:`FreshFamilyBudget`)."""

    def __init__(self, study: Any) -> None:
        self._study = study

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states: Any = None, use_cache: bool = False):
        trials = self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
        return [t for t in trials if not t.user_attrs.get(WARM_ATTR)]


# --------------------------------------------------------------------------- warm starts


def _signature(sp: Any) -> dict[str, Any]:
    """Each parameter of a compiled space -> what it is, per family (or per grid point)."""
    out: dict[str, Any] = {}
    if sp.grid:
        for i, point in enumerate(sp.grid):
            for key, value in point.items():
                out[f"grid[{i}] {key}"] = value
            out[f"grid[{i}]"] = sorted(point)
        return out
    out[FAMILY_KEY] = repr(sp.family.dist) if sp.family.sampled else sp.family.value
    for fam in sp.families:
        for p in fam.every:
            what = repr(p.dist) if p.sampled else ("fixed", repr(p.value))
            out.setdefault(p.key, {})[fam.name] = what
    return out


def space_difference(new: Any, old: Any) -> str | None:
    """The first parameter (in ``new``'s order) in which two compiled spaces differ, or None."""
    a, b = _signature(new), _signature(old)
    for key in [*a, *(k for k in b if k not in a)]:
        if a.get(key) != b.get(key):
            return key
    return None


def _earlier(sp: Any, exp: str, metric: str, mode: str) -> dict[str, Any]:
    """Read an earlier experiment's settings, checking that it searched the same space."""
    from lossearch.experiment import read_meta
    from lossearch.search.space import load_space

    meta = read_meta(exp)
    if not isinstance(meta, dict) or "space" not in meta:
        raise LossearchError(f"--warm-start {exp}: not a lossearch experiment")
    try:
        old = load_space(meta["space"], meta["overrides"])
    except LossearchError as err:  # written by another lossearch, whose schema differed
        raise LossearchError(f"--warm-start {exp}: its saved space does not load: {err}") from None
    key = space_difference(sp, old)
    if key is not None:
        raise LossearchError(f"--warm-start {exp}: a different search space (first: '{key}')")
    for what, ours in (("metric", metric), ("mode", mode)):
        if meta.get(what) != ours:
            raise LossearchError(
                f"--warm-start {exp}: its {what} is '{meta.get(what)}', this search's '{ours}'"
            )
    return meta


def _exp_path(exp: str) -> str:
    if is_uri(exp):
        return exp
    path = Path(absolute_path(exp))
    if not path.is_dir():
        raise LossearchError(f"--warm-start {exp}: not an experiment directory")
    return str(path)


def warm_start(
    sp: Any, experiments: Sequence[str], metric: str, mode: str
) -> list[FrozenTrial]:
    """The earlier experiments' trials as Optuna trials of ``sp`` (see the module docstring).

    Raises a one-line :class:`LossearchError` for a path that is not an experiment, a
    different space, metric or mode, or a trial that ``sp`` cannot replay.
    """
    if not experiments:
        return []
    import warnings

    from analysis.load import PartialExperimentWarning, load_trials

    out: list[FrozenTrial] = []
    for exp in experiments:
        path = _exp_path(exp)
        _earlier(sp, path, metric, mode)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PartialExperimentWarning)
            frame = load_trials([path])
        column = f"final.{metric}"
        for trial_id, rows in frame.groupby("trial_id", sort=False):
            status = rows["status"].iloc[0]
            if status == "running":
                continue
            flat = {
                c[len("param."):]: v.item() if hasattr(v, "item") else v
                for c, v in rows.iloc[0].items()
                if c.startswith("param.") and v is not None and not _nan(v)
            }
            flat[FAMILY_KEY] = rows["loss"].iloc[0]
            fixed = optuna.trial.FixedTrial(flat)
            try:
                sp.define_by_run(fixed)
            except (ValueError, KeyError, LossearchError) as err:
                raise LossearchError(f"--warm-start {exp}: trial {trial_id}: {err}") from None
            value = rows[column].mean() if column in rows else math.nan
            state = {"finished": TrialState.COMPLETE, "pruned": TrialState.PRUNED}.get(
                status, TrialState.FAIL
            )
            if state == TrialState.COMPLETE and not _finite(value):
                state = TrialState.FAIL
            seeds = [int(s) for s in rows["seed"].dropna()]
            out.append(
                optuna.trial.create_trial(
                    state=state,
                    value=float(value) if state == TrialState.COMPLETE else None,
                    params=fixed.params,
                    distributions=fixed.distributions,
                    intermediate_values=(
                        {int(rows["epochs"].max()): float(value)}
                        if state == TrialState.PRUNED and _finite(value)
                        else None
                    ),
                    user_attrs={
                        "ray_trial_id": str(trial_id),
                        "seeds": seeds,
                        "experiment": path,
                        WARM_ATTR: True,
                    },
                )
            )
    return out


def _nan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def measured(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The trials that measured their configuration (finished or pruned)."""
    return [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def unmeasured_grid_points(sp: Any, warm: Sequence[FrozenTrial]) -> list[int]:
    """Under a grid, the points no warm-started trial measured, in order."""
    done = {t.params.get(GRID_KEY) for t in measured(warm)}
    return [i for i in range(len(sp.grid)) if i not in done]


def points_to_run(sp: Any, warm: Sequence[FrozenTrial]) -> list[dict[str, Any]]:
    """What the searcher enqueues: ``first_points`` no warm trial matched, then under a grid
    (with warm trials) its unmeasured points."""
    configs = [sp.define_by_run(optuna.trial.FixedTrial(t.params)) for t in measured(warm)]
    first = [
        dict(p)
        for p in sp.settings.get("first_points") or []
        if not any(all(c.get(k) == v for k, v in p.items()) for c in configs)
    ]
    if sp.grid and warm:
        first += [{GRID_KEY: i} for i in unmeasured_grid_points(sp, warm)]
    return first


def plan(
    sp: Any,
    experiments: Sequence[str],
    metric: str,
    mode: str,
    num_samples: int,
    given: bool,
) -> tuple[list[str], int]:
    """Check a warm start before Ray starts: the experiments' resolved paths, and the number
    of new trials (under a grid at most its unmeasured points, their number by default)."""
    paths = [_exp_path(e) for e in experiments]
    warm = warm_start(sp, paths, metric, mode)
    if not sp.grid or not paths:
        return paths, num_samples
    left = len(unmeasured_grid_points(sp, warm))
    if left == 0:
        raise LossearchError("--warm-start: every grid point is measured already")
    if given and num_samples > left:
        raise LossearchError(
            f"--num-samples {num_samples} exceeds the grid's {left} unmeasured points"
        )
    return paths, min(num_samples, left)


def make_searcher(
    sp: Any, meta: dict[str, Any], exp_path: str | None
) -> RecordingOptunaSearch:
    """The search's searcher: ``OptunaSearch`` over ``sp`` (with its seeds and per-family
    budgets from ``meta``), started from ``meta["warm_start"]``'s trials, recording into
    ``exp_path``'s persistent study (created here when it does not exist yet; None: no
    record)."""
    if meta.get("per_family"):
        sp = sp.with_per_family(meta["per_family"])
    warm = warm_start(sp, meta["warm_start"], meta["metric"], meta["mode"])
    recorder = None if exp_path is None else StudyRecorder(exp_path, meta)
    if recorder is not None:
        recorder.ensure(warm)
    sampler = sp.make_sampler(meta["sampler_seed"])
    if warm and isinstance(sampler, PerFamilySampler):
        sampler.__class__ = FreshFamilyBudget
    return RecordingOptunaSearch(
        space=sp.with_seeds(meta["seeds"]).define_by_run,
        metric=meta["metric"],
        mode=meta["mode"],
        sampler=sampler,
        points_to_evaluate=points_to_run(sp, warm) or None,
        recorder=recorder,
        warm=warm,
    )
