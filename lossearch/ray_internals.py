"""Every use lossearch makes of Ray's private API, in one place.

Ray's public API does not cover what these do; each was measured to matter (see the
docstrings) and each is checked by ``tests/test_ray_internals.py``, which fails when a Ray
release renames what is relied on here. Should a name go away, each function degrades to
Ray's own default behaviour, which also works (slower or noisier).

- :data:`ENV`: environment knobs read by Ray Train V2's controller and workers;
- :func:`trainer_class`: ``TorchTrainer`` minus per-run actors lossearch does not use, and
  without Train's own SIGINT handler under the ``lossearch`` command;
- :func:`quiet_train_reports`: the logger name of Train V2's per-report INFO line;
- :func:`remove_placement_group`: a placement group from its hex id;
- :func:`stop_tune`: Tune's graceful stop (its SIGUSR1 handler);
- :func:`quiet_incomplete_trials`: Tune's closing "Trials did not complete" error line;
- :func:`tbx_callback_into`: Tune's TensorBoard logger writing where lossearch says;
- :func:`optuna_study`, :func:`optuna_trial`, :func:`optuna_told`: what Tune's
  ``OptunaSearch`` keeps of its study, for recording trials in a persistent one;
- :data:`SETUP_HOOK_ENV`: how a Ray worker is told its process setup hook;
- :func:`tune_trials_in_job_env`: Tune's trial actors without a runtime env of their own;
- :func:`callback_usage_without_mlflow`: Tune's usage tag of its callbacks without
  importing MLflow.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

ENV = {
    # Train V2 (Ray 2.60 needs it set for ray.train's V2 API)
    "RAY_TRAIN_V2_ENABLED": "1",
    # The controller advances only when it polls its workers: every start-up step, every
    # ray.train.report and the end of a run wait for the next poll. At Ray's default of 2 s
    # a run with 4 reports took 17 s here against 8.7 s at 0.5 s; a poll costs the
    # controller and each worker a few milliseconds. Must be set in the process that calls
    # fit() (Ray passes it on to the controller).
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
}
"""Set (unless the user set them) before a Ray Train run starts; see :func:`use_train_env`."""

LOCAL_ENV = {
    # One machine, no autoscaler: nothing can preempt a node, so Train V2's per-run
    # PreemptionWatcher actor would only poll. Workers inherit it from the raylet.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}
"""Set before a local Ray starts (not when joining a cluster)."""

TUNE_ACTOR_ENV = {
    # Tune gives each trial actor this variable (for PyTorch Lightning) as a runtime env,
    # which keeps the actor off Ray's idle workers; set for the whole local Ray, the actor
    # needs none (tune_trials_in_job_env).
    "PL_DISABLE_FORK": "1",
}
"""Tune's own variables for its trial actors; set before a local Ray starts."""

# Train V2 default callbacks that start an actor per run and do nothing for lossearch:
# - DatasetsCallback starts a DatasetManager to shard Ray Datasets; lossearch passes none
#   (each worker reads its task itself).
# - PlacementGroupCleanerCallback starts a detached actor that polls Ray's state API (which
#   needs the dashboard, absent from lossearch's local Ray) to remove the worker group's
#   placement group if the controller dies while its driver lives. `lossearch train` exits
#   when its controller dies, and Ray removes a finished job's placement groups; in a
#   search, the search driver removes a stopped trial's group (remove_placement_group).
UNUSED_TRAIN_CALLBACKS = frozenset({"DatasetsCallback", "PlacementGroupCleanerCallback"})

# Train V2's module whose logger (named by its file path, not ``ray.train...``, so
# ``LoggingConfig`` misses it) prints the whole metrics dict at INFO on every report.
TRAIN_CONTEXT_MODULE = "ray.train.v2._internal.execution.context"


SETUP_HOOK_ENV = "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR"
"""Ray's ``WORKER_PROCESS_SETUP_HOOK_ENV_VAR``: a Python worker started with it set imports
and calls the function it names (``module.function``) after connecting, before it takes
work (``default_worker.py``); ``runtime_env={"worker_process_setup_hook": ...}`` sets it
through a runtime env, which would give every task and actor a non-default one. Set in the
environment a local Ray starts with, it reaches the workers Ray starts with its node, which
are the ones Tune's first trial actors can take (:mod:`lossearch.warm`)."""


def use_train_env(local: bool = False) -> None:
    """Set :data:`ENV` (and, for a local Ray, :data:`LOCAL_ENV` and :data:`TUNE_ACTOR_ENV`)
    where the user has not."""
    for key, value in {**ENV, **({**LOCAL_ENV, **TUNE_ACTOR_ENV} if local else {})}.items():
        os.environ.setdefault(key, value)


def trainer_class() -> type:
    """``TorchTrainer`` without the per-run actors of :data:`UNUSED_TRAIN_CALLBACKS`.

    Each of those actors is one more Python process started and stopped per run (about a
    CPU-second each here, which two trials side by side on two cores feel). Uses Train V2's
    ``_create_default_callbacks`` hook, and ``_register_sigint_handler``: Train's handler
    (logs, aborts the controller, then ``sys.exit``) would replace the ``lossearch``
    command's, which stops quietly (:mod:`lossearch.interrupt`).
    """
    from ray.train.torch import TorchTrainer

    from lossearch.interrupt import catching_stop_signals

    class LossearchTrainer(TorchTrainer):
        def _create_default_callbacks(self) -> list[Any]:
            return [
                cb
                for cb in super()._create_default_callbacks()
                if type(cb).__name__ not in UNUSED_TRAIN_CALLBACKS
            ]

        def _register_sigint_handler(self, controller: Any) -> None:
            if not catching_stop_signals():
                super()._register_sigint_handler(controller)

    return LossearchTrainer


def quiet_train_reports() -> None:
    """Silence Train V2's per-report INFO line in a worker (warnings stay)."""
    import importlib

    try:
        module = importlib.import_module(TRAIN_CONTEXT_MODULE)
    except ImportError:  # another Ray layout: its lines are only noise
        return
    logging.getLogger(module.__file__).setLevel(logging.WARNING)


def remove_placement_group(pg_hex: str) -> None:
    """Remove the placement group whose id is ``pg_hex``; no error if it is already gone."""
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup
    from ray.util.placement_group import remove_placement_group as remove

    try:
        remove(PlacementGroup(PlacementGroupID.from_hex(pg_hex)))
    except Exception:  # already removed by the trainer itself
        pass


def stop_tune() -> bool:
    """Stop a running ``Tuner.fit()`` gracefully, as its own Ctrl-C handling does.

    Tune listens on SIGUSR1 while it runs (its graceful stop: running trials are stopped and
    the experiment state saved, so ``resume`` continues them); False when it does not yet.
    Tune's messages about the stop (a warning with Ray's restore call, "Trials did not
    complete") are silenced: the command line prints its own line.
    """
    handler = signal.getsignal(signal.SIGUSR1)
    if not callable(handler):
        return False
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    handler(signal.SIGUSR1, None)
    return True


# Where Tune's run() logs, at its end, the trials that did not finish (one ERROR record).
TUNE_RUN_LOGGER = "ray.tune.tune"
INCOMPLETE_TRIALS = "Trials did not complete"


class _IncompleteTrials(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(INCOMPLETE_TRIALS)


_INCOMPLETE_FILTER = _IncompleteTrials()


def quiet_incomplete_trials(quiet: bool) -> None:
    """Drop (``quiet``) or keep Tune's closing ``Trials did not complete: [<trial>, ...]``.

    An ERROR record of Tune's ``run()`` listing errored trials by Tune's name, printed after
    lossearch's own line for each ended trial and before its summary (``trials: 1 errored,
    ...``): at lossearch's live view it says nothing new. Other records of that logger pass.
    """
    logger = logging.getLogger(TUNE_RUN_LOGGER)
    if quiet:
        logger.addFilter(_INCOMPLETE_FILTER)
    else:
        logger.removeFilter(_INCOMPLETE_FILTER)


def tbx_callback_into(folder_of: Callable[[Any], str]) -> Any:
    """Ray Tune's ``TBXLoggerCallback`` writing each trial's event files to
    ``folder_of(trial)`` instead of the trial's own folder.

    Ray's callback builds one writer per trial by calling its ``_summary_writer_cls`` with
    the trial folder; this subclass swaps in a writer factory that ignores that folder.
    """
    from ray.tune.logger import TBXLoggerCallback

    class TensorBoardCallback(TBXLoggerCallback):
        def __init__(self) -> None:
            super().__init__()
            self._writer_class = self._summary_writer_cls
            self._summary_writer_cls = self._writer
            self._next = ""

        def log_trial_start(self, trial: Any) -> None:
            self._next = folder_of(trial)
            super().log_trial_start(trial)

        def _writer(self, _trial_dir: str, **kwargs: Any) -> Any:
            return self._writer_class(self._next, **kwargs)

    return TensorBoardCallback()


def no_tune_tensorboard() -> Any:
    """A callback that keeps Ray Tune from writing its default TensorBoard files.

    Unless its callbacks hold a ``TBXLoggerCallback``, Tune adds one whenever tensorboardX is
    installed: event files in every trial folder, and torch imported in the driver (~2 s)
    to write them. An instance of this do-nothing subclass counts as that logger (Tune checks
    with ``isinstance``), so it adds none; it imports no tensorboardX and writes nothing.
    """
    from ray.tune.logger import TBXLoggerCallback

    class NoTensorBoard(TBXLoggerCallback):
        def __init__(self) -> None:  # not TBXLoggerCallback's: it imports tensorboardX
            pass

        def log_trial_start(self, trial: Any) -> None:
            pass

        def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
            pass

        def log_trial_end(self, trial: Any, failed: bool = False) -> None:
            pass

    return NoTensorBoard()


def optuna_study(searcher: Any) -> Any:
    """The in-memory ``optuna.Study`` a Ray Tune ``OptunaSearch`` asks and tells."""
    return searcher._ot_study


def optuna_trial(searcher: Any, trial_id: str) -> Any:
    """The Optuna trial an ``OptunaSearch`` asked for Tune trial ``trial_id`` (None: none)."""
    ot_trial = searcher._ot_trials.get(trial_id)
    if ot_trial is None:
        return None
    return searcher._ot_study.get_trials(deepcopy=False)[ot_trial.number]


def optuna_told(searcher: Any, trial_id: str) -> bool:
    """Whether an ``OptunaSearch`` has already told its study the result of ``trial_id``."""
    return trial_id in searcher._completed_trials


@contextmanager
def tune_trials_in_job_env(job_env: Mapping[str, str] | None) -> Iterator[None]:
    """Within: Tune creates trial actors without its runtime env where it adds nothing.

    Tune gives every trial actor ``runtime_env={"env_vars": ...}`` (``PL_DISABLE_FORK`` and
    the driver's values of a list of Ray Train and AWS variables: ``_ActorClassCache``).
    Ray runs an actor with a runtime env of its own only in a new worker process, never in
    the idle ones it starts with the node, so every first trial paid a worker's start-up
    and its imports (:mod:`lossearch.warm`). ``job_env`` is the environment the local Ray
    was started with (None: not known, Tune's behaviour is kept); where each of Tune's
    variables has the same value there, the workers already have them and the actor is
    created without a runtime env. Otherwise, or if Tune's cache is not where it was, Ray's
    own behaviour.
    """
    try:
        from ray.tune.execution import class_cache
    except ImportError:
        yield
        return
    cache_cls = getattr(class_cache, "_ActorClassCache", None)
    original = getattr(cache_cls, "get", None)
    names = getattr(class_cache, "ENV_VARS_TO_PROPAGATE", None)
    defaults = getattr(class_cache, "DEFAULT_ENV_VARS", None)
    if job_env is None or original is None or names is None or defaults is None:
        yield
        return

    def get(self: Any, trainable_cls: type) -> Any:
        import ray

        wanted = {**defaults, **{k: os.environ[k] for k in names if k in os.environ}}
        if any(job_env.get(k) != v for k, v in wanted.items()):
            return original(self, trainable_cls)
        if trainable_cls not in self._cache:
            self._cache[trainable_cls] = ray.remote(trainable_cls)
        return self._cache[trainable_cls]

    cache_cls.get = get
    try:
        yield
    finally:
        cache_cls.get = original


MLFLOW_INTEGRATION = "ray.air.integrations.mlflow"
"""Ray's MLflow integration module: importing it imports ``mlflow``."""


@contextmanager
def callback_usage_without_mlflow() -> Iterator[None]:
    """Within: Tune's usage tag of a run's callbacks imports no MLflow that no callback uses.

    ``Tuner.fit`` tags which of Ray's callback classes a run passes (usage telemetry,
    ``ray.air._internal.usage.tag_callbacks``) by importing each integration to compare
    classes; :data:`MLFLOW_INTEGRATION` imports ``mlflow``, 0.8-1.2 s of the driver's CPU
    (2-core machine) on the way to the first trial, every search. A callback can be Ray's
    ``MLflowLoggerCallback`` only once that module is imported: until it is (no ``--log-to
    mlflow``), the tag, which changes nothing in the run, is skipped. Otherwise, or if
    Ray's function is not where it was, Ray's own.
    """
    try:
        from ray.air._internal import usage
    except ImportError:
        yield
        return
    original = getattr(usage, "tag_callbacks", None)
    if original is None:
        yield
        return

    def tag_callbacks(callbacks: Any) -> Any:
        if MLFLOW_INTEGRATION in sys.modules:
            return original(callbacks)
        return False

    usage.tag_callbacks = tag_callbacks
    try:
        yield
    finally:
        usage.tag_callbacks = original
