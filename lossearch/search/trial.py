"""One search trial: the Ray Tune function trainable that trains a sampled configuration.

A trial with one worker (``scaling.num_workers == 1``, every built-in space) runs
:func:`lossearch.fit.fit` for the Tune trial's own process, which holds the worker's CPUs
(and GPU) and is reused by the next trial (``reuse_actors``): in a child forked for it from
the local Ray's fork server where the search started one (CPU trials on Linux,
:mod:`lossearch.fork_server`; the trial process relays the reports and imports no torch),
else in the trial process itself, its imports done once for all its trials. Ray's
docs keep Ray Train for trials that need several workers; a one-worker Train run would add a
controller and a worker process per trial, each importing torch and transformers (about
17 s a trial on 2 cores, issue 16). A trial with several workers runs a Ray Train run
inside the trial (Train V2's "Train inside Tune" pattern), its reports forwarded to Tune by
``TuneReportCallback``.

Both keep the trial's checkpoints under ``<exp>/trainings/<trial_id>/checkpoint_*``, one per
epoch, the newest two kept, so a restarted trial (``lossearch resume`` after a crash, or
Tune's retry after a failure) resumes from its last finished epoch. A trial whose loss
becomes NaN or infinite ends in error (:class:`TrialDiverged`), not retried.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from lossearch import storage
from lossearch.config import TrainConfig
from lossearch.experiment import trainings_path

DIVERGED = "diverged.txt"  # in a one-worker trial's run folder: why its loss diverged


class TrialDiverged(RuntimeError):
    """A trial's loss became NaN or infinite; the trial is recorded as errored."""


def in_trial_process(config: dict[str, Any]) -> bool:
    """Whether a training config (as a dict) trains in the trial's process: one worker."""
    return int(config["scaling"]["num_workers"]) == 1


def trial_resources(base_config: dict[str, Any]) -> dict[str, float]:
    """What a trial reserves: the worker's CPUs (and GPU) in-process, else 0.01 CPU.

    A trial with a Ray Train run only waits on it (the workers reserve their own); Ray
    refuses a request of zero.
    """
    if not in_trial_process(base_config):
        return {"CPU": 0.01}
    sc = base_config["scaling"]
    resources = {"CPU": float(sc["cpus_per_worker"])}
    if sc["use_gpu"]:
        resources["GPU"] = float(sc["gpus_per_worker"])
    return resources


def run_trial(
    config: dict[str, Any],
    *,
    base: dict[str, Any],
    seeds: list[int],
    trainings_path: str,
    max_failures: int,
) -> None:
    """Tune function trainable: train the sampled ``config`` over ``base`` for ``seeds``."""
    from ray import tune

    from lossearch.search.trial_config import trial_to_config

    cfg = trial_to_config(base, config)
    name = tune.get_context().get_trial_id()
    train_in_trial(cfg, seeds, trainings_path, name, max_failures=max_failures)


def train_in_trial(
    cfg: TrainConfig,
    seeds: list[int],
    runs_path: str,
    name: str,
    *,
    max_failures: int,
    test: bool = False,
) -> Callable[[], AbstractContextManager[Any]]:
    """Train ``cfg`` for ``seeds`` inside the current Tune trial, the run at ``runs_path/name``.

    Reports every epoch to Tune; returns a function that opens the run's final checkpoint
    as a local folder (a context manager). ``test`` scores the test split after the last
    epoch (the confirm stage). Raises :class:`TrialDiverged` on a NaN or infinite loss.
    """
    if in_trial_process(cfg.to_dict()):
        run = storage.join_uri(runs_path, name)
        _fit_in_trial(cfg, seeds, run, test)
        from lossearch.checkpointing import latest_in_run  # no torch: reading only

        return lambda: latest_in_run(run)
    return _fit_with_ray_train(cfg, seeds, runs_path, name, max_failures, test)


def _fit_in_trial(cfg: TrainConfig, seeds: list[int], run: str, test: bool) -> None:
    """:func:`lossearch.fit.fit` for this trial, checkpoints in ``run``, reports to Tune: in
    a child of the local Ray's fork server where it has one (:mod:`lossearch.fork_server`,
    this process then imports no torch), else in this process."""
    import ray
    from ray import tune

    from lossearch.errors import NonFiniteLoss

    if storage.file_exists(run, DIVERGED):  # Tune retries a failed trial: not this one
        raise TrialDiverged(storage.read_text(run, DIVERGED))

    def report(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        tune.report(metrics)

    tags = {"node_id": ray.get_runtime_context().get_node_id()}
    kwargs = {"seeds": seeds, "test": test, "tags": tags, "echo": False}
    try:
        _fit_in_run(cfg, run, report, kwargs)
    except NonFiniteLoss as err:
        storage.write_text(run, DIVERGED, str(err))
        raise TrialDiverged(str(err)) from None


def _fit_in_run(cfg: TrainConfig, run: str, report: Any, kwargs: dict[str, Any]) -> None:
    """``fit_in_run`` through the fork server named in this process's environment, or here
    where there is none (or it no longer answers)."""
    import os

    from lossearch.fork_server import ADDRESS_ENV, ForkServerGone, fit_in_run_forked

    address = os.environ.get(ADDRESS_ENV, "0")
    if address != "0" and not cfg.scaling.use_gpu:
        try:
            return fit_in_run_forked(address, cfg, run, report, **kwargs)
        except ForkServerGone as err:
            print(f"[lossearch] {err}; training in the trial process", file=sys.stderr)
    from lossearch.fit import fit_in_run

    fit_in_run(cfg, run, report, **kwargs)


def _fit_with_ray_train(
    cfg: TrainConfig, seeds: list[int], runs_path: str, name: str, max_failures: int, test: bool
) -> Callable[[], AbstractContextManager[Any]]:
    """A Ray Train run at ``runs_path/name`` whose reports Tune receives."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from lossearch.ray_train import build_trainer, diverged_error

    trainer = build_trainer(
        cfg,
        seeds=seeds,
        storage_path=runs_path,
        name=name,
        callbacks=[TuneReportCallback()],
        max_failures=max_failures,
        test=test,
        echo=False,
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    reason = diverged_error(result)
    if reason:
        raise TrialDiverged(reason)
    return result.checkpoint.as_directory


def trainable(meta: dict[str, Any], exp_path: str) -> Any:
    """The Tune trainable of the search at ``exp_path`` described by ``meta``."""
    from ray import tune

    fn = tune.with_parameters(
        run_trial,
        base=meta["base_config"],
        seeds=meta["seeds"],
        trainings_path=trainings_path(exp_path),
        max_failures=meta["max_failures"],
    )
    return tune.with_resources(fn, trial_resources(meta["base_config"]))


def tune_failures(config: dict[str, Any], max_failures: int) -> int:
    """Tune's retries of a failed trial training ``config``: ``max_failures`` in-process,
    0 for a Ray Train run, which restarts its own workers up to ``max_failures`` times."""
    return max_failures if in_trial_process(config) else 0


def free_training_resources() -> Any:
    """A Tune callback that removes an ended trial's Ray Train placement group.

    When ASHA stops a trial early, Tune ends the trial function while its ``TorchTrainer``
    is still running; the trainer's workers and their placement group outlive it (Train V2's
    own clean-up needs Ray's dashboard), holding CPUs that later trials wait for. Each run
    reports its placement group id, and this callback removes the group once the trial ends.
    In-process trials report none.
    """
    from ray import tune

    from lossearch.ray_internals import remove_placement_group

    class FreeTrainingResources(tune.Callback):
        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._free(trial)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._free(trial)

        @staticmethod
        def _free(trial: Any) -> None:
            pg_hex = (trial.last_result or {}).get("placement_group")
            if pg_hex:
                remove_placement_group(pg_hex)

    return FreeTrainingResources()
