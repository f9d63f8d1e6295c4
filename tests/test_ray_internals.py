"""What ``lossearch/ray_internals.py`` relies on in Ray's private API is still there.

Each test names one reliance; when a Ray release renames it, the test fails here instead of
lossearch silently falling back to Ray's slower or noisier defaults.
"""

from __future__ import annotations

import importlib
import inspect
import signal
from pathlib import Path

import ray

from lossearch import ray_internals
from lossearch.config import load_config


def _ray_source(*parts: str) -> str:
    return Path(ray.__file__).parent.joinpath(*parts).read_text()


def test_train_v2_still_reads_the_environment_knobs_lossearch_sets():
    constants = _ray_source("train", "v2", "_internal", "constants.py")
    for name in {**ray_internals.ENV, **ray_internals.LOCAL_ENV}:
        assert f'"{name}"' in constants, name


def test_use_train_env_sets_only_what_the_user_has_not(monkeypatch):
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "3")
    monkeypatch.delenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", raising=False)
    ray_internals.use_train_env(local=True)
    import os

    assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "3"
    assert os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0"


def test_trainer_hooks_lossearch_overrides_still_exist():
    from ray.train.torch import TorchTrainer

    for hook in ("_create_default_callbacks", "_register_sigint_handler"):
        assert callable(getattr(TorchTrainer, hook, None)), hook
    params = inspect.signature(TorchTrainer._register_sigint_handler).parameters
    assert list(params) == ["self", "controller"]


def test_trainer_drops_only_the_per_run_actors_lossearch_does_not_use(ray_local, tmp_path):
    """Ray Train V2 still names these callbacks so; lossearch's trainer has all the others."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from lossearch.ray_train import build_trainer

    cfg = load_config()
    ours = build_trainer(cfg, storage_path=str(tmp_path), name="ours")
    stock = TorchTrainer(
        lambda: None,
        scaling_config=ScalingConfig(num_workers=1),
        run_config=RunConfig(name="stock", storage_path=str(tmp_path)),
    )
    unused = ray_internals.UNUSED_TRAIN_CALLBACKS
    ours_names = [type(cb).__name__ for cb in ours._create_default_callbacks()]
    stock_names = [type(cb).__name__ for cb in stock._create_default_callbacks()]
    assert unused <= set(stock_names)
    assert ours_names == [n for n in stock_names if n not in unused]


def test_train_report_logger_is_still_named_by_its_file():
    module = importlib.import_module(ray_internals.TRAIN_CONTEXT_MODULE)
    assert "logging.getLogger(__file__)" in inspect.getsource(module)
    assert "def report(" in inspect.getsource(module)


def test_placement_group_ids_still_parse_from_hex():
    from ray._raylet import PlacementGroupID

    pg = PlacementGroupID.from_random()
    assert PlacementGroupID.from_hex(pg.hex()) == pg
    ray_internals.remove_placement_group(pg.hex())  # unknown to Ray (none running): no error


def test_tune_still_stops_gracefully_on_sigusr1():
    assert "signal.SIGUSR1" in _ray_source("tune", "tune.py")
    previous = signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    try:
        assert ray_internals.stop_tune() is False  # no Tune run listening
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_tune_tbx_logger_still_builds_writers_through_its_class_attribute(tmp_path):
    from ray.tune.logger import TBXLoggerCallback

    assert callable(TBXLoggerCallback()._summary_writer_cls)
    source = inspect.getsource(TBXLoggerCallback)
    assert "self._summary_writer_cls(" in source  # called with the trial folder
    callback = ray_internals.tbx_callback_into(lambda trial: str(tmp_path / "t"))
    callback.log_trial_start(_Trial(tmp_path))
    assert (tmp_path / "t").is_dir() and not any((tmp_path / "trial").iterdir())


def test_tune_adds_no_tensorboard_logger_beside_the_do_nothing_one(tmp_path):
    """Tune adds its TBX logger unless one is given (an isinstance check); ours writes
    nothing and imports no tensorboardX."""
    import subprocess
    import sys

    from ray.tune.logger import TBXLoggerCallback
    from ray.tune.utils.callback import _create_default_callbacks

    quiet = ray_internals.no_tune_tensorboard()
    assert [c for c in _create_default_callbacks([quiet], air_verbosity=None)
            if isinstance(c, TBXLoggerCallback)] == [quiet]
    assert any(isinstance(c, TBXLoggerCallback)
               for c in _create_default_callbacks([], air_verbosity=None))
    trial = _Trial(tmp_path)
    quiet.log_trial_start(trial)
    quiet.log_trial_result(1, trial, {"m": 1.0})
    quiet.log_trial_end(trial)
    assert not any((tmp_path / "trial").iterdir())
    code = ("import sys; from lossearch.ray_internals import no_tune_tensorboard; "
            "no_tune_tensorboard(); print('tensorboardX' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


class _Trial:
    """What TBXLoggerCallback.log_trial_start reads of a Tune trial."""

    def __init__(self, root):
        (root / "trial").mkdir()
        self.local_path = self.path = str(root / "trial")
        self.config = {"optim.lr": 1e-3}
        self.trial_id = "t0"

    def init_local_path(self):
        pass


def test_a_failed_trial_prints_no_traceback_at_the_live_view(ray_local, tmp_path):
    """At lossearch's live view (verbose 1) Tune logs neither the failed trial's traceback
    (``TUNE_PRINT_ALL_TRIAL_ERRORS``) nor its closing "Trials did not complete" line; the
    trial's ``error.txt`` keeps the traceback. With Ray's own output (-v) both are back."""
    import logging

    from ray import tune

    from lossearch.search.progress import resume_view

    def diverges(config):  # local: pickled by value for the trial's process
        from lossearch.search.trial import TrialDiverged

        raise TrialDiverged("loss became nan at epoch 1, step 3 (seed 0)")

    class Records(logging.Handler):  # on "ray.tune": sees what its loggers let through
        def __init__(self):
            super().__init__(logging.DEBUG)
            self.lines = []

        def emit(self, record):
            self.lines.append(record.getMessage() + (" +traceback" if record.exc_info else ""))

    def run(verbose: int, name: str) -> list[str]:
        resume_view(verbose)
        seen = Records()
        logging.getLogger("ray.tune").addHandler(seen)
        try:
            grid = tune.Tuner(
                diverges,
                run_config=tune.RunConfig(name=name, storage_path=str(tmp_path), verbose=0),
            ).fit()
        finally:
            logging.getLogger("ray.tune").removeHandler(seen)
        assert grid[0].error is not None
        return seen.lines

    try:
        quiet, loud = run(1, "quiet"), run(2, "loud")
    finally:
        resume_view(1)
    said = [line for line in quiet if "Trial task failed" in line
            or line.startswith(ray_internals.INCOMPLETE_TRIALS) or "+traceback" in line]
    assert not said, said
    (error_file,) = (tmp_path / "quiet").glob("*/error.txt")
    assert "TrialDiverged: loss became nan" in error_file.read_text()
    assert any(line.startswith("Trial task failed") and "+traceback" in line for line in loud)
    assert any(line.startswith(ray_internals.INCOMPLETE_TRIALS) for line in loud), loud


def test_optuna_search_still_keeps_its_study_trials_and_told_ids():
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    def space(trial):
        trial.suggest_float("x", 0.0, 1.0)

    sampler = optuna.samplers.RandomSampler(seed=0)
    searcher = OptunaSearch(space=space, metric="m", mode="max", sampler=sampler)
    assert isinstance(ray_internals.optuna_study(searcher), optuna.Study)
    assert ray_internals.optuna_trial(searcher, "t1") is None
    config = searcher.suggest("t1")
    ot_trial = ray_internals.optuna_trial(searcher, "t1")
    assert ot_trial.params["x"] == config["x"]
    assert not ray_internals.optuna_told(searcher, "t1")
    searcher.on_trial_complete("t1", result={"m": 0.5})
    assert ray_internals.optuna_told(searcher, "t1")
    assert ray_internals.optuna_trial(searcher, "t1").value == 0.5


def test_analysis_leaves_out_every_key_tune_adds_to_a_result():
    """analysis keeps its own copy of Tune's automatic result keys (it imports no Ray): a key
    Ray adds in a later release must be added there, or it shows up as a metric column."""
    from ray.tune.result import AUTO_RESULT_KEYS

    from analysis.tune_files import TUNE_KEYS

    assert set(AUTO_RESULT_KEYS) <= TUNE_KEYS, sorted(set(AUTO_RESULT_KEYS) - TUNE_KEYS)


def test_ray_workers_still_run_the_setup_hook_named_by_the_environment():
    import inspect

    from ray._private import ray_constants
    from ray._private.workers import default_worker

    from lossearch.ray_internals import SETUP_HOOK_ENV

    assert ray_constants.WORKER_PROCESS_SETUP_HOOK_ENV_VAR == SETUP_HOOK_ENV
    assert "WORKER_PROCESS_SETUP_HOOK_ENV_VAR" in inspect.getsource(default_worker)


def test_tune_trial_actors_drop_tunes_runtime_env_only_where_the_job_has_its_values(
    monkeypatch,
):
    from ray.tune.execution.class_cache import (
        DEFAULT_ENV_VARS,
        ENV_VARS_TO_PROPAGATE,
        _ActorClassCache,
    )

    from lossearch.ray_internals import TUNE_ACTOR_ENV, tune_trials_in_job_env

    assert DEFAULT_ENV_VARS.items() <= TUNE_ACTOR_ENV.items()  # a local Ray has Tune's own

    class Trainable:
        pass

    def runtime_env(job_env):
        with tune_trials_in_job_env(job_env):
            remote = _ActorClassCache().get(Trainable)
        return remote._default_options.get("runtime_env")

    for name in ENV_VARS_TO_PROPAGATE:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_TRAIN_V2_ENABLED", "1")  # one of the variables Tune passes on
    job = {"PL_DISABLE_FORK": "1", "RAY_TRAIN_V2_ENABLED": "1"}
    assert runtime_env(job) is None
    other = runtime_env({**job, "RAY_TRAIN_V2_ENABLED": "0"})  # the workers have another
    assert other["env_vars"]["RAY_TRAIN_V2_ENABLED"] == "1"
    assert runtime_env(None)["env_vars"]["PL_DISABLE_FORK"] == "1"  # not lossearch's Ray
    assert _ActorClassCache.get.__module__.startswith("ray.")  # restored on leaving


def test_tunes_callback_usage_tag_imports_mlflow_only_where_a_callback_could_be_its():
    """Ray still tags callbacks through the function lossearch swaps, importing MLflow to do
    it; within the swap, a fresh driver (no MLflow imported) tags without importing it, and
    one that has imported Ray's MLflow integration gets Ray's own tag."""
    import subprocess
    import sys

    from lossearch.ray_internals import MLFLOW_INTEGRATION

    assert "air_usage.tag_callbacks(callbacks)" in _ray_source("tune", "tune.py")
    assert f"from {MLFLOW_INTEGRATION} import" in _ray_source("air", "_internal", "usage.py")
    probe = (
        "import sys\n"
        "from ray import tune\n"
        "from ray.air._internal import usage\n"
        "from lossearch.ray_internals import callback_usage_without_mlflow\n"
        "class Mine(tune.Callback): pass\n"
        "with callback_usage_without_mlflow():\n"
        "    skipped = usage.tag_callbacks([Mine()])\n"
        "    print(skipped, 'mlflow' in sys.modules)\n"
        "    import ray.air.integrations.mlflow\n"
        "    print(usage.tag_callbacks([Mine()]) is not False)\n"
        "print(usage.tag_callbacks.__module__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[:3] == ["False False", "True", "ray.air._internal.usage"]
