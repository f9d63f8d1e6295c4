"""The live view of a search or confirm: Ray Tune's progress table, one line per ended trial.

Ray Tune 2.60 prints progress through its newer output engine (``RAY_AIR_NEW_OUTPUT``, on by
default), which ignores ``RunConfig(progress_reporter=...)`` ("AIR_VERBOSITY is set, ignoring
passed-in ProgressReporter") and prints a result box of every metric when a trial ends (every
epoch at verbosity 2). With ``RAY_AIR_NEW_OUTPUT=0`` Tune uses its classic reporters, whose
:class:`ray.tune.CLIReporter` takes the table's columns (``parameter_columns``,
``metric_columns``) and, at ``verbose=1``, prints the status table only.

So by default (``verbose=1``) lossearch sets ``RAY_AIR_NEW_OUTPUT=0`` in the driver and gives
Tune a ``CLIReporter`` whose table holds, per trial, its status, loss family, the family's
own parameters, the CE mixing weight, learning rate, epoch and the metric(s); it prints the
table when a trial's status or epoch changed (at most every ``max_report_frequency``
seconds) and at the end, rather than every 5 s. What lossearch adds is
:class:`TrialLines`, a Tune callback printing one line per ended trial::

    trial 3/8 focal w_ce=0.6 γ=2.1 lr=3.1e-3 → exact_match 0.57 (2 epochs, 41 s)

``verbose=2`` (``-v``) leaves Ray's own output engine at its default verbosity, as Ray prints
it; ``verbose=0`` prints nothing.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

from ray import tune

from lossearch.metrics import summary_line
from lossearch.search.trial_config import CE_WEIGHT_KEY, FAMILY_KEY

NEW_OUTPUT = "RAY_AIR_NEW_OUTPUT"
PRINT_TRIAL_ERRORS = "TUNE_PRINT_ALL_TRIAL_ERRORS"  # Tune's: a trial error's traceback, logged
LR_KEY = "optim.lr"
_SYMBOLS = {
    "alpha": "α", "beta": "β", "gamma": "γ", "delta": "δ", "epsilon": "ε", "lambda": "λ",
    "tau": "τ", "temperature": "τ",
}
# the user's own settings of what the live view sets, restored by -v
_user_env = {key: os.environ.get(key) for key in (NEW_OUTPUT, PRINT_TRIAL_ERRORS)}


def label(key: str) -> str:
    """A short name for a flat config key: ``loss.focal.gamma`` → ``γ``, ``loss.ce.weight``
    → ``w_ce``, ``optim.lr`` → ``lr``."""
    if key == CE_WEIGHT_KEY:
        return "w_ce"
    if key == LR_KEY:
        return "lr"
    name = key.rsplit(".", 1)[-1]
    return _SYMBOLS.get(name, name)


def fmt_value(value: Any) -> str:
    """A compact number (``2.1``, ``0.6``, ``3.1e-3``); anything else as ``str``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if value == 0 or not math.isfinite(value) or 1e-2 <= abs(value) < 1e4:
        return f"{value:.3g}"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _own_params(flat: Mapping[str, Any]) -> list[str]:
    """The loss-parameter keys of a flat trial config: the CE mixing weight, then the
    family's own (its derived ``loss.<family>.weight`` left out)."""
    family = flat.get(FAMILY_KEY)
    keys = [CE_WEIGHT_KEY] if CE_WEIGHT_KEY in flat else []
    keys += sorted(
        k for k in flat
        if k.startswith(f"loss.{family}.") and k != f"loss.{family}.weight"
    )
    return [k for k in keys if flat[k] is not None]


def describe(flat: Mapping[str, Any]) -> str:
    """``focal w_ce=0.6 γ=2.1 lr=3.1e-3`` for a flat trial config."""
    parts = [str(flat.get(FAMILY_KEY, "?"))]
    keys = _own_params(flat) + ([LR_KEY] if flat.get(LR_KEY) is not None else [])
    parts += [f"{label(k)}={fmt_value(flat[k])}" for k in keys]
    return " ".join(parts)


def search_columns(points: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Progress-table parameter columns (key → header) over flat configs a search can make:
    family, CE weight, every family's own parameters (``focal.γ``), learning rate (where
    searched)."""
    own: dict[str, None] = {}
    lr = False
    for flat in points:
        own.update(dict.fromkeys(_own_params(flat)))
        lr = lr or flat.get(LR_KEY) is not None
    columns = {FAMILY_KEY: "family"}
    for key in sorted(own, key=lambda k: (k != CE_WEIGHT_KEY, k)):
        columns[key] = label(key) if key == CE_WEIGHT_KEY else f"{key.split('.')[1]}.{label(key)}"
    if lr:
        columns[LR_KEY] = "lr"
    return columns


STAGING_LINE = "Result logdir: "
"""How Ray's status table starts the line naming a trial's local staging folder."""


class LiveTable(tune.CLIReporter):
    """Ray's ``CLIReporter``, printed when a trial's status or epoch changed (at most every
    ``max_report_frequency`` seconds) and at the end, instead of every few seconds; without
    its ``Result logdir:`` line, which names Ray's local staging folder under ``/tmp/ray``,
    not the experiment (the driver prints ``experiment: <path>`` when it starts)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._shown: tuple = ()
        self._shown_at = 0.0
        self._every = float(kwargs.get("max_report_frequency", 5))

    def should_report(self, trials: list, done: bool = False) -> bool:
        state = tuple((t.trial_id, t.status, (t.last_result or {}).get("epoch")) for t in trials)
        if done or (state != self._shown and time.time() - self._shown_at >= self._every):
            self._shown, self._shown_at = state, time.time()
            return True
        return False

    def report(self, trials: list, done: bool, *sys_info: str) -> None:
        table = io.StringIO()
        with contextlib.redirect_stdout(table):
            super().report(trials, done, *sys_info)
        lines = table.getvalue().splitlines()
        print("\n".join(ln for ln in lines if not ln.startswith(STAGING_LINE)), flush=True)


class TrialLines(tune.Callback):
    """One line per ended trial: ``trial 3/8 <description> → <metric> <value> (<epochs>,
    <seconds> s)``; an errored trial's line says how it ended instead (:func:`error_outcome`).

    ``descriptions`` maps a trial config's ``run`` to its description (confirm runs); a
    search trial is described from its flat config (:func:`describe`) over ``defaults``
    (the base config's learning rate, where the space does not search it).
    """

    def __init__(
        self, total: int, metrics: list[str], epochs: int,
        descriptions: Mapping[str, str] | None = None, unit: str = "trial",
        defaults: Mapping[str, Any] | None = None,
    ) -> None:
        self.total, self.metrics, self.epochs = total, list(metrics), epochs
        self.descriptions, self.unit = dict(descriptions or {}), unit
        self.defaults = dict(defaults or {})

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        print(f"[lossearch] {self.describe(trial)}  {summary_line(result, self.epochs)}",
              flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        print(self.line(trials, trial), flush=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        print(self.line(trials, trial, error=error_outcome(trial)), flush=True)

    def describe(self, trial: Any) -> str:
        """``focal w_ce=0.6 γ=2 lr=3e-3`` (a search trial), or a confirm run's description."""
        config = trial.config or {}
        return self.descriptions.get(config.get("run")) or describe({**self.defaults, **config})

    def line(self, trials: list, trial: Any, error: str | None = None) -> str:
        ended = 1 + sum(
            1 for t in trials if t is not trial and t.status in ("TERMINATED", "ERROR")
        )
        what = self.describe(trial)
        result = trial.last_result or {}
        if error is not None:
            outcome = error
        else:
            outcome = ", ".join(
                f"{m} {fmt_value(result[m])}" if isinstance(result.get(m), (int, float))
                else f"no {m}"
                for m in self.metrics
            )
        epoch = int(result.get("epoch") or 0)
        epochs = f"{epoch} epoch{'s' * (epoch != 1)}"
        if epoch < self.epochs and error is None:
            epochs = f"stopped after {epoch} of {self.epochs} epochs"
        seconds = float(result.get("time_total_s") or 0.0)
        total = f"/{self.total}" if self.total else ""
        return f"{self.unit} {ended}{total} {what} → {outcome} ({epochs}, {seconds:.0f} s)"


def error_outcome(trial: Any) -> str:
    """How an errored trial ended, for its line: ``diverged: loss became nan at epoch 1, step
    3 (seed 0)`` (:class:`~lossearch.search.trial.TrialDiverged`, an outcome of the search),
    else ``error: <the error's last line> (traceback: <trial folder>/error.txt)``."""
    last = _error_line(trial)
    kind, _, message = last.partition(": ")
    if kind.rsplit(".", 1)[-1] == "TrialDiverged":
        return f"diverged: {message}"
    folder = os.path.basename(str(getattr(trial, "path", "") or "").rstrip("/"))
    return f"error: {last}" + (f" (traceback: {folder}/error.txt)" if folder else "")


def _error_line(trial: Any) -> str:
    """The exception line of a trial's error trace (``TrialDiverged: loss is nan``), read as
    :func:`analysis.tune_files.first_error_line` reads it for the analysis tables."""
    from analysis.tune_files import first_error_line

    try:  # the local error file Tune has just written (its copy in storage comes later)
        text = open(trial.error_file).read() if trial.error_file else ""
    except OSError:
        text = ""
    return first_error_line(str(text)) or "failed"


def live_view(
    *, verbose: int, total: int, metrics: list[str], epochs: int,
    columns: Mapping[str, str], descriptions: Mapping[str, str] | None = None,
    unit: str = "trial", defaults: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``RunConfig`` keyword arguments (``verbose``, ``progress_reporter``) and the callbacks
    of the live view at ``verbose`` (0 silent, 1 lossearch's view, 2 Ray's own output).

    Sets ``RAY_AIR_NEW_OUTPUT=0`` in this process for verbosity 1 (read by ``Tuner.fit``),
    and restores the user's own setting otherwise.
    """
    metrics = list(dict.fromkeys(m for m in metrics if m))
    resume_view(verbose)
    if verbose != 1:
        return {"run_config": {"verbose": min(int(verbose), 1)}, "callbacks": []}
    reporter = LiveTable(
        parameter_columns=dict(columns),
        metric_columns={"epoch": "epoch", **{m: m for m in metrics}},
        max_report_frequency=10,
        max_column_length=24,
    )
    lines = TrialLines(total, metrics, epochs, descriptions, unit, defaults)
    return {"run_config": {"verbose": 1, "progress_reporter": reporter}, "callbacks": [lines]}


def resume_view(verbose: int) -> None:
    """Choose Tune's output for ``verbose``: at 1 its classic engine, which prints the
    ``CLIReporter`` of :func:`live_view` (else the user's own setting, by default Ray's new
    engine), and Optuna's INFO lines off; at 0 and 1 no traceback of a failed trial (Tune's
    ``TUNE_PRINT_ALL_TRIAL_ERRORS``: the trial's line names the error, its ``error.txt``
    keeps the traceback) nor Tune's closing "Trials did not complete" line. A resumed search
    gets its reporter and callbacks back from Tune's saved state, so this is all there is to
    choose."""
    from lossearch.ray_internals import quiet_incomplete_trials

    quiet_incomplete_trials(verbose <= 1)
    _set_env(NEW_OUTPUT, "0" if verbose == 1 else None)
    _set_env(PRINT_TRIAL_ERRORS, "0" if verbose <= 1 else None)
    if verbose == 1:
        import optuna

        # "A new study created in memory/Journal" per search: noise beside the live view
        optuna.logging.set_verbosity(optuna.logging.WARNING)


def _set_env(key: str, value: str | None) -> None:
    """Set ``key`` to ``value``; None: back to the user's own setting (or unset)."""
    value = _user_env[key] if value is None else value
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value


def search_view(sp: Any, meta: Mapping[str, Any], verbose: int) -> dict[str, Any]:
    """:func:`live_view` of a search over the space ``sp`` (a ``SearchSpace``) described by
    its ``meta`` (``lossearch_search.yaml``): a column for every loss parameter it can set."""
    points = list(sp.grid) or [
        {**dict.fromkeys(sp.keys_for(name), 0.0), FAMILY_KEY: name} for name in sp.family_names
    ]
    return live_view(
        verbose=verbose, total=int(meta["num_samples"]), metrics=[meta["metric"]],
        epochs=int(meta["base_config"]["optim"]["epochs"]), columns=search_columns(points),
        defaults={LR_KEY: meta["base_config"]["optim"]["lr"]},
    )


def flat_loss(family: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The flat keys :func:`describe` shows, from a training-config tree of ``family``: its
    CE weight (a mixed family), its own loss parameters and the learning rate."""
    loss = config.get("loss") or {}
    flat: dict[str, Any] = {FAMILY_KEY: family}
    ce = loss.get("ce")
    if family != "ce" and isinstance(ce, Mapping) and ce.get("weight"):
        flat[CE_WEIGHT_KEY] = ce["weight"]
    own = loss.get(family)
    if isinstance(own, Mapping):
        flat.update({f"loss.{family}.{k}": v for k, v in own.items() if k != "weight"})
    flat[LR_KEY] = (config.get("optim") or {}).get("lr")
    return flat
