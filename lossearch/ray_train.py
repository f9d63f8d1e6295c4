"""Ray: starting or joining it, and the thin Ray Train V2 adapter around :func:`lossearch.fit.fit`.

A Ray Train run is used where a training needs Ray's placement: several data-parallel
workers (gloo on CPU, NCCL on GPU), or ``lossearch train`` / the confirm stage, whose runs
Ray Train checkpoints and restarts. The per-worker function only places the worker (its
rank, device, ``prepare_model``), resumes from Ray's checkpoint and forwards each epoch's
report to ``ray.train.report``; the training itself is :func:`lossearch.fit.fit`.
"""

from __future__ import annotations

import os
import signal
import socket
from contextlib import nullcontext
from typing import Any

from lossearch.config import TrainConfig, validate
from lossearch.errors import LossearchError
from lossearch.interrupt import STOP_SIGNALS, catching_stop_signals, on_stop_signal


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any] | None:
    """Ray Train per-worker function: :func:`lossearch.fit.fit` with Ray's placement.

    ``loop_config = {"config": <TrainConfig dict>, "seeds": [...], "test": bool, "echo":
    bool}`` (``echo``: :func:`lossearch.fit.fit`'s per-epoch line, default on). A loss
    that becomes NaN or infinite is returned, not raised (``{"diverged": 1.0, "error": ...}``,
    read by :func:`diverged_error`): a raised error would make Ray Train restart the worker,
    and a result without the search metric would stop the whole Tune run (strict metric
    checking in ``OptunaSearch.on_trial_result``).
    """
    import ray
    import ray.train
    import ray.train.torch

    from lossearch.fit import NonFiniteLoss, fit
    from lossearch.ray_internals import quiet_train_reports

    quiet_train_reports()
    cfg = validate(loop_config["config"])
    ctx = ray.train.get_context()
    runtime = ray.get_runtime_context()
    # where this run's workers are; the search driver removes the placement group when Tune
    # stops a trial early (lossearch.search.trial)
    tags = {
        "node_id": runtime.get_node_id(),
        "placement_group": runtime.get_placement_group_id() or "",
    }

    def report(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)

    checkpoint = ray.train.get_checkpoint()
    try:
        with (checkpoint.as_directory() if checkpoint else nullcontext()) as resume_from:
            fit(
                cfg,
                report,
                seeds=loop_config.get("seeds"),
                test=bool(loop_config.get("test", False)),
                resume_from=resume_from,
                rank=ctx.get_world_rank(),
                world=ctx.get_world_size(),
                device=ray.train.torch.get_device(),
                prepare_model=ray.train.torch.prepare_model,
                tags=tags,
                echo=bool(loop_config.get("echo", True)),
            )
    except NonFiniteLoss as err:
        return {"diverged": 1.0, "error": str(err)}
    return None


def build_trainer(
    cfg: TrainConfig,
    *,
    seeds: list[int] | None = None,
    storage_path: str,
    name: str,
    callbacks: list[Any] | None = None,
    max_failures: int = 0,
    test: bool = False,
    echo: bool = True,
) -> Any:
    """A ``TorchTrainer`` running :func:`train_loop_per_worker` for ``cfg``.

    ``test`` scores the test split after the last epoch (``lossearch train``, the confirm
    stage); ``echo`` prints each epoch's line from rank 0 (off in search and confirm
    trials, whose driver prints it). The run lives at ``storage_path/name``; building the
    trainer again with the same pair resumes from its latest checkpoint (Train V2 keeps a
    checkpoint-manager snapshot there). Two checkpoints are kept.
    """
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig

    from lossearch.ray_internals import trainer_class, use_train_env

    use_train_env()
    sc = cfg.scaling
    resources = {"CPU": sc.cpus_per_worker}
    if sc.use_gpu:
        resources["GPU"] = sc.gpus_per_worker
    return trainer_class()(
        train_loop_per_worker,
        train_loop_config={
            "config": cfg.to_dict(), "seeds": seeds or [cfg.seed], "test": test, "echo": echo
        },
        scaling_config=ScalingConfig(
            num_workers=sc.num_workers, use_gpu=sc.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )


_LOCAL_RAY: dict[str, Any] = {}  # the local Ray this process started: its node id and env


def local_ray_env() -> dict[str, str] | None:
    """The environment the connected Ray's workers inherit, where this process started
    that Ray (:func:`init_ray` without an address); else None."""
    import ray

    if not ray.is_initialized() or not _LOCAL_RAY:
        return None
    if ray.get_runtime_context().get_node_id() != _LOCAL_RAY["node"]:
        return None
    return _LOCAL_RAY["env"]


def diverged_error(result: Any) -> str | None:
    """Why a finished ``trainer.fit()`` diverged (NaN/inf loss), or None if it did not."""
    value = getattr(result, "return_value", None)
    if isinstance(value, dict) and value.get("error"):
        return str(value["error"])
    if result.metrics and "error" in result.metrics:
        return str(result.metrics["error"])
    return None


def check_ray_address(address: str | None) -> None:
    """Fail at once, in one line, when ``HOST:PORT`` accepts no connection.

    ``ray.init(address=...)`` would retry for minutes, logging as it goes. Other forms
    (``auto``, ``ray://...``) are left to Ray.
    """
    if not address or "://" in address or address == "auto":
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise LossearchError(f"--address must be HOST:PORT, got '{address}'")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as err:
        raise LossearchError(
            f"cannot reach Ray cluster at {address}: {err.strerror or err}"
        ) from None


def init_ray(
    address: str | None = None, num_cpus: int | None = None, warm: int = 0, fork: int = 0
) -> None:
    """Join ``address`` (or ``RAY_ADDRESS``), else start a local Ray; no-op when connected.

    Ray's own INFO/WARNING chatter (worker-group start-up, state-API polling without a
    dashboard) would drown the per-epoch progress lines: errors only, no dashboard. A local
    Ray started here has its first ``warm`` Python workers import what a trial imports
    (:mod:`lossearch.warm`); with ``fork`` (a trial's CPUs, 0 for none) a fork server
    starts before it, for one-worker trials to train in its children
    (:mod:`lossearch.fork_server`). Its environment is kept
    for :func:`local_ray_env`.
    """
    import ray

    from lossearch.ray_internals import use_train_env

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None  # ray.init reads it too
    check_ray_address(address)
    use_train_env(local=not address)  # workers inherit the knobs from the raylet
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "logging_config": ray.LoggingConfig(log_level="ERROR"),
    }
    keep_handlers = catching_stop_signals()  # ray.init replaces the SIGTERM handler
    env: dict[str, str] = {}
    if address:
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError) as err:
            raise LossearchError(f"cannot reach Ray cluster at {address}: {err}") from None
    else:
        from lossearch.warm import worker_env

        env = worker_env(warm)
        if fork:
            from lossearch import fork_server

            env.update(fork_server.start(fork))
        os.environ.update(env)  # the raylet, and through it each worker, inherits them
        try:
            ray.init(num_cpus=num_cpus, **kwargs)
            _LOCAL_RAY.update(
                node=ray.get_runtime_context().get_node_id(), env=dict(os.environ)
            )
        finally:
            for key in env:
                os.environ.pop(key, None)
    if keep_handlers:
        for signum in STOP_SIGNALS:
            signal.signal(signum, on_stop_signal)
    if env:
        from lossearch.warm import wait_for_claims

        wait_for_claims(env)
