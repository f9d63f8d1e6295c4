"""One fine-tuning run on Ray Train V2: the per-worker loop, the trainer, and ``train``.

The per-worker function :func:`train_loop_per_worker` reads top to bottom::

    build task data, loss, and one replica (model, optimizer, schedule) per seed
    resume from the latest checkpoint, if Ray Train hands one back
    for epoch:
        for each replica: for batch: composite loss, backward, clip, step
        evaluate by greedy generation on rank 0
        ray.train.report(metrics, checkpoint)

Several seeds in one run share the data and the Ray workers: each seed has its own model and
optimizer, they train in turn within an epoch, and the reported metric is the mean over seeds
(each seed's own values are reported as ``seed<k>/<metric>``). ``lossearch train`` uses one
seed; ``lossearch search --seeds S`` runs S per trial. Data parallelism is Ray Train's: one
process per worker (gloo on CPU, NCCL on GPU), the model wrapped by ``prepare_model``; each
global batch of ``optim.batch_size * num_workers`` examples is split across workers.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lossearch.config import TrainConfig, dump_config, validate
from lossearch.errors import LossearchError
from lossearch.interrupt import STOP_SIGNALS, catching_stop_signals, interrupted, on_stop_signal


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""


# --------------------------------------------------------------------------- data order


def epoch_batches(
    n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1
) -> list[list[int]]:
    """This worker's example indices for each step of ``epoch``.

    A permutation of ``range(n)`` drawn from ``(seed, epoch)`` is cut into global batches of
    ``batch_size * world`` (the last partial one dropped); worker ``rank`` takes the
    ``rank``-th slice of ``batch_size`` from each. Deterministic, so a resumed run sees the
    same order, and a 1-worker run with ``batch_size * world`` sees the same global batches.
    """
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    global_bs = batch_size * world
    steps = n // global_bs
    return [
        perm[s * global_bs + rank * batch_size : s * global_bs + (rank + 1) * batch_size]
        for s in range(steps)
    ]


# --------------------------------------------------------------------------- one seed's state


@dataclass
class Replica:
    """Everything one seed trains: model (maybe DDP-wrapped), tokenizer, optimizer, schedule."""

    seed: int
    model: Any
    tokenizer: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    history: list[dict[str, Any]] = field(default_factory=list)
    scaler: torch.amp.GradScaler | None = None  # fp16 loss scaling, see make_scaler


def plan_steps(n_train: int, cfg: TrainConfig, world: int = 1) -> tuple[int, int, int]:
    """``(steps_per_epoch, total_steps, epochs)`` in optimizer steps for ``n_train`` examples.

    A step consumes ``batch_size * world * grad_accum`` examples; ``optim.max_steps`` caps
    the total, which can end training inside an epoch (``epochs`` rounds up).
    ``steps_per_epoch`` is exactly what :func:`train_epoch` steps: the whole accumulation
    groups among the epoch's micro-batches (:func:`accumulation_groups`).
    """
    steps_per_epoch = n_train // (cfg.optim.batch_size * world) // cfg.optim.grad_accum
    if steps_per_epoch < 1:
        raise LossearchError(
            f"{n_train} training examples are fewer than one optimizer step "
            f"({cfg.optim.batch_size} x {world} workers x {cfg.optim.grad_accum} accumulation)"
        )
    total_steps = min(cfg.optim.max_steps or 10**12, steps_per_epoch * cfg.optim.epochs)
    return steps_per_epoch, total_steps, math.ceil(total_steps / steps_per_epoch)


def build_optimizer(cfg: TrainConfig, model: Any, total_steps: int) -> tuple[Any, Any]:
    """AdamW over the trainable weights and the warmup + ``optim.scheduler`` LR schedule."""
    from transformers import get_scheduler

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    scheduler = get_scheduler(
        cfg.optim.scheduler,
        optimizer,
        num_warmup_steps=min(cfg.optim.warmup_steps, total_steps),
        num_training_steps=total_steps,
    )
    return optimizer, scheduler


def build_replica(cfg: TrainConfig, seed: int, total_steps: int) -> Replica:
    """Model + tokenizer from ``cfg.model`` (prepared by Ray Train), optimizer, schedule."""
    import ray.train.torch

    from lossearch.models import load_model_and_tokenizer

    torch.manual_seed(seed)
    model, tokenizer = load_model_and_tokenizer(cfg.model, seed=seed)
    model = ray.train.torch.prepare_model(model)
    optimizer, scheduler = build_optimizer(cfg, model, total_steps)
    scaler = make_scaler(cfg, ray.train.torch.get_device())
    return Replica(seed, model, tokenizer, optimizer, scheduler, scaler=scaler)


# --------------------------------------------------------------------------- precision


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The dtype ``optim.mixed_precision`` autocasts to on ``device`` (None: no autocast).

    ``auto`` is bfloat16 on CUDA and no autocast elsewhere; ``bf16``/``fp16`` apply on any
    device (torch autocasts on CPU too).
    """
    mode = cfg.optim.mixed_precision
    if mode == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}[mode]


def autocast_context(cfg: TrainConfig, device: torch.device) -> Any:
    """``torch.autocast`` for :func:`autocast_dtype`, or a no-op context without one."""
    dtype = autocast_dtype(cfg, device)
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def make_scaler(cfg: TrainConfig, device: torch.device) -> torch.amp.GradScaler | None:
    """A ``GradScaler`` for fp16 autocast (float16 gradients underflow without one), else None."""
    if autocast_dtype(cfg, device) != torch.float16:
        return None
    return torch.amp.GradScaler(device.type)


# --------------------------------------------------------------------------- steps


def accumulation_groups(
    batches: list[list[int]], accum: int, step_cap: int
) -> list[list[list[int]]]:
    """The epoch's micro-batches cut into optimizer steps of ``accum`` micro-batches each.

    Only whole groups are kept, at most ``step_cap`` of them: leftover micro-batches at the
    end of an epoch (fewer than ``accum``) are not trained, as the last partial global
    batch is not (:func:`epoch_batches`). Every backward pass is thus followed by a step in
    the same epoch, and the step count is :func:`plan_steps`'s ``steps_per_epoch``.
    """
    n_groups = min(len(batches) // accum, max(step_cap, 0))
    return [batches[g * accum : (g + 1) * accum] for g in range(n_groups)]


def grad_sync(model: Any, sync: bool) -> Any:
    """Context for one micro-batch's forward and backward: DDP's ``no_sync()`` unless ``sync``.

    Under ``DistributedDataParallel`` only the last micro-batch of an accumulation group
    all-reduces (the gradients summed locally before it are reduced with it); a model that
    is not DDP-wrapped gets a no-op context.
    """
    if not sync and isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model.no_sync()
    return nullcontext()


def optimizer_step(rep: Replica, cfg: TrainConfig) -> None:
    """Clip, step the optimizer (through the fp16 scaler if any) and the schedule, zero grads.

    With a scaler the gradients are unscaled before clipping, and a step whose gradients
    are not finite is skipped by the scaler (its scale is lowered instead).
    """
    if rep.scaler is not None:
        rep.scaler.unscale_(rep.optimizer)
    if cfg.optim.max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(rep.model.parameters(), cfg.optim.max_grad_norm)
    if rep.scaler is not None:
        rep.scaler.step(rep.optimizer)
        rep.scaler.update()
    else:
        rep.optimizer.step()
    rep.scheduler.step()
    rep.optimizer.zero_grad(set_to_none=True)


def train_epoch(
    rep: Replica,
    features: list[dict[str, list[int]]],
    loss_fn: Any,
    cfg: TrainConfig,
    epoch: int,
    device: torch.device,
    rank: int,
    world: int,
    step_cap: int,
) -> dict[str, float]:
    """One pass over this worker's shard; returns mean loss, components and tokens/s.

    Trains :func:`accumulation_groups` (at most ``step_cap`` optimizer steps, each of
    ``optim.grad_accum`` micro-batches, the loss divided by ``grad_accum``), under
    :func:`autocast_context`; under DDP only a group's last micro-batch all-reduces
    (:func:`grad_sync`). Gradients are zero when it returns. The means are over the
    micro-batches trained. Raises :class:`NonFiniteLoss` at the first micro-batch whose
    loss is NaN or infinite.
    """
    from lossearch.tasks import collate

    rep.model.train()
    rep.optimizer.zero_grad(set_to_none=True)
    pad_id = rep.tokenizer.pad_token_id
    accum = cfg.optim.grad_accum
    batches = epoch_batches(len(features), cfg.optim.batch_size, rep.seed, epoch, rank, world)
    totals: dict[str, float] = {}
    n_tokens, n_micro, t0 = 0, 0, time.perf_counter()
    for group in accumulation_groups(batches, accum, step_cap):
        for j, idx in enumerate(group):
            batch = {
                k: v.to(device) for k, v in collate([features[i] for i in idx], pad_id).items()
            }
            with grad_sync(rep.model, sync=j == len(group) - 1):
                with autocast_context(cfg, device):
                    logits = rep.model(
                        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                    ).logits
                out = loss_fn(logits, batch["labels"], batch["answer_mask"])
                if not torch.isfinite(out.total):
                    raise NonFiniteLoss(
                        f"loss became {out.total.item()} at epoch {epoch}, "
                        f"step {n_micro + 1} (seed {rep.seed})"
                    )
                scaled = out.total / accum
                (rep.scaler.scale(scaled) if rep.scaler is not None else scaled).backward()
            n_tokens += int(batch["attention_mask"].sum())
            n_micro += 1
            totals["loss"] = totals.get("loss", 0.0) + float(out.total.detach())
            for name, value in out.components.items():
                totals[f"loss.{name}"] = totals.get(f"loss.{name}", 0.0) + float(value.detach())
        optimizer_step(rep, cfg)
    elapsed = max(time.perf_counter() - t0, 1e-9)
    stats = {k: v / max(n_micro, 1) for k, v in totals.items()}
    stats["tokens_per_s"] = n_tokens * world / elapsed
    return stats


def predict(
    rep: Replica, examples: list[Any], cfg: TrainConfig, device: torch.device, math: bool
) -> list[str]:
    """Greedy continuations of ``examples``' prompts (cut after the answer line for math)."""
    from lossearch.metrics import generate
    from lossearch.models import unwrap

    model = unwrap(rep.model)
    model.eval()
    return generate(
        model,
        rep.tokenizer,
        [ex.prompt for ex in examples],
        max_new_tokens=cfg.eval.max_new_tokens,
        batch_size=cfg.eval.batch_size,
        stop_after_answer=math,
    )


def evaluate(rep: Replica, data: Any, cfg: TrainConfig, device: torch.device) -> dict[str, float]:
    """Greedy generation on the validation split, scored by the task's metrics."""
    from lossearch.metrics import score

    preds = predict(rep, data.validation, cfg, device, data.spec.kind == "math")
    return score(data.spec, preds, [ex.target for ex in data.validation])


def evaluate_test(
    rep: Replica, data: Any, cfg: TrainConfig, device: torch.device
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Score the test split: ``({"test/<metric>": mean}, one row per question)``.

    Each row is ``{"index", "prediction", "reference", <metric>: value}`` in test order,
    the per-question record the paired comparisons of ``lossearch confirm`` read.
    """
    from lossearch.metrics import score_each

    preds = predict(rep, data.test, cfg, device, data.spec.kind == "math")
    refs = [ex.target for ex in data.test]
    scores = score_each(data.spec, preds, refs)
    rows = [
        {"index": i, "prediction": p, "reference": r, **sc}
        for i, (p, r, sc) in enumerate(zip(preds, refs, scores, strict=True))
    ]
    means = {f"test/{k}": sum(sc[k] for sc in scores) / len(scores) for k in scores[0]}
    return means, rows


def record_name(seed: int) -> str:
    """File name of one seed's per-question test record (JSON lines) in a run's checkpoint."""
    return f"test_predictions.seed{seed}.jsonl"


def mean_over_seeds(per_seed: dict[int, dict[str, float]]) -> dict[str, float]:
    """Trial-level metrics: the mean over seeds of each key, plus ``seed<k>/<key>`` copies."""
    keys = sorted({k for m in per_seed.values() for k in m})
    out: dict[str, float] = {}
    for key in keys:
        values = [m[key] for m in per_seed.values() if key in m]
        out[key] = sum(values) / len(values)
    for seed, m in per_seed.items():
        for key, value in m.items():
            out[f"seed{seed}/{key}"] = value
    return out


def _quiet_libraries() -> None:
    """No Hugging Face progress bars or info messages in the workers' output.

    Nor Ray Train's per-report INFO line (the whole metrics dict, once per epoch): its
    logger is named by its file path, not ``ray.train...``, so ``LoggingConfig`` misses
    it and the worker's root logger prints it. Warnings stay.
    """
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        from ray.train.v2._internal.execution import context as train_context
    except ImportError:  # another Ray layout: its lines are only noise
        return
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)


# --------------------------------------------------------------------------- the loop


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any] | None:
    """Ray Train per-worker function.

    ``loop_config = {"config": <TrainConfig dict>, "seeds": [...], "test": bool}``. The
    validation split is scored every ``eval.every_epochs``; with ``test`` the test split is
    also scored after the last epoch (``test/<metric>``, and each seed's per-question record
    :func:`record_name` in the final checkpoint). Without it (a search trial) the
    test split is not even loaded.
    """
    import ray.train
    import ray.train.torch

    from lossearch.checkpointing import read_state, restore_replica, write_checkpoint
    from lossearch.losses import build_loss
    from lossearch.tasks import load_task, tokenize

    _quiet_libraries()
    cfg = validate(loop_config["config"])
    seeds: list[int] = list(loop_config.get("seeds") or [cfg.seed])
    with_test = bool(loop_config.get("test", False))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))

    # build: data, loss, one replica per seed
    data = load_task(cfg.task, test=with_test)
    loss_fn = build_loss(cfg.loss)
    n_train = len(data.train)
    steps_per_epoch, total_steps, epochs = plan_steps(n_train, cfg, world)
    replicas = [build_replica(cfg, seed, total_steps) for seed in seeds]
    features, _ = tokenize(data.train, replicas[0].tokenizer, cfg.task.max_length)

    # resume
    start_epoch, history = 1, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            state, history = read_state(ckpt_dir)
            for rep in replicas:
                restore_replica(ckpt_dir, rep)
        start_epoch = state["epoch"] + 1
    if start_epoch > epochs and history:
        # finished just before a restart: report the last epoch again so Tune sees it
        ray.train.report(history[-1])
        return

    for epoch in range(start_epoch, epochs + 1):
        step_cap = total_steps - (epoch - 1) * steps_per_epoch
        per_seed: dict[int, dict[str, float]] = {}
        try:
            for rep in replicas:
                per_seed[rep.seed] = train_epoch(
                    rep, features, loss_fn, cfg, epoch, device, rank, world, step_cap
                )
        except NonFiniteLoss as err:
            # Not reported: a result without the search metric stops the whole Tune run
            # (strict metric checking, OptunaSearch.on_trial_result). The caller reads the
            # reason from Result.return_value (rank 0's), see diverged_error.
            return {"epoch": epoch, "diverged": 1.0, "error": str(err)}
        test_rows: dict[int, list[dict[str, Any]]] = {}
        if rank == 0 and (epoch % cfg.eval.every_epochs == 0 or epoch == epochs):
            for rep in replicas:
                per_seed[rep.seed].update(evaluate(rep, data, cfg, device))
                if with_test and epoch == epochs:
                    means, test_rows[rep.seed] = evaluate_test(rep, data, cfg, device)
                    per_seed[rep.seed].update(means)
        metrics = {"epoch": epoch, **mean_over_seeds(per_seed)}
        # where this epoch ran (strings, so analysis does not take them for metrics); the
        # search driver removes the placement group when Tune stops a trial early
        runtime = ray.get_runtime_context()
        metrics["node_id"] = runtime.get_node_id()
        metrics["placement_group"] = runtime.get_placement_group_id() or ""
        metrics["worker_pid"] = str(os.getpid())
        history.append(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            if rank == 0:
                # sys.stdout, not print: Ray Train patches print to also log, which doubles it
                sys.stdout.write(f"[lossearch] {summary_line(metrics, epochs)}\n")
                sys.stdout.flush()
                write_checkpoint(tmp, epoch, history, replicas)
                for seed, rows in test_rows.items():
                    Path(tmp, record_name(seed)).write_text(
                        "".join(json.dumps(r) + "\n" for r in rows)
                    )
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
            else:
                ray.train.report(metrics)


# --------------------------------------------------------------------------- Ray Train's cost

HEALTH_CHECK_INTERVAL_S = "0.5"

# Train V2 default callbacks that start an actor per run and do nothing for lossearch:
# - DatasetsCallback starts a DatasetManager to shard Ray Datasets; lossearch passes none
#   (each worker reads its task itself).
# - PlacementGroupCleanerCallback starts a detached actor that polls Ray's state API (which
#   needs the dashboard, absent from lossearch's local Ray) to remove the worker group's
#   placement group if the controller dies while its driver lives. `lossearch train` exits
#   when its controller dies, and Ray removes a finished job's placement groups; in a
#   search, where Tune stopping a trial does leave its placement group behind, the search
#   driver removes it (search/driver.py, _free_training_resources).
UNUSED_TRAIN_CALLBACKS = frozenset({"DatasetsCallback", "PlacementGroupCleanerCallback"})


def use_fast_polling() -> None:
    """Let Ray Train's controller poll its workers every 0.5 s instead of every 2 s.

    The controller (Train V2) advances only when it polls: every start-up step, every
    ``ray.train.report`` (a worker's report queue holds one result) and the end of the run
    each wait for the next poll. At Ray's default of 2 s a run with 4 reports took 17 s
    here against 8.7 s at 0.5 s; a poll costs the controller and each worker a few
    milliseconds. Set ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` to choose another interval;
    it must be set in the process that calls ``fit()`` (Ray passes it on to the controller).
    """
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", HEALTH_CHECK_INTERVAL_S)


def trainer_class() -> type:
    """``TorchTrainer`` without the per-run actors of :data:`UNUSED_TRAIN_CALLBACKS`.

    Each of those actors is one more Python process started and stopped per run (about a
    CPU-second each here, which two trials side by side on two cores feel). The filter uses
    Train V2's ``_create_default_callbacks`` hook; should a Ray release rename it, the
    override is never called and the run keeps Ray's defaults, which also work.
    """
    from ray.train.torch import TorchTrainer

    class LossearchTrainer(TorchTrainer):
        def _create_default_callbacks(self) -> list[Any]:
            return [
                cb
                for cb in super()._create_default_callbacks()
                if type(cb).__name__ not in UNUSED_TRAIN_CALLBACKS
            ]

        def _register_sigint_handler(self, controller: Any) -> None:
            # Train V2's handler (logs, aborts the controller, then sys.exit) would replace
            # the lossearch command's (catch_stop_signals), which stops quietly.
            if not catching_stop_signals():
                super()._register_sigint_handler(controller)

    return LossearchTrainer


# --------------------------------------------------------------------------- the trainer


def build_trainer(
    cfg: TrainConfig,
    *,
    seeds: list[int] | None = None,
    storage_path: str,
    name: str,
    callbacks: list[Any] | None = None,
    max_failures: int = 0,
    test: bool = False,
) -> Any:
    """A ``TorchTrainer`` running :func:`train_loop_per_worker` for ``cfg``.

    ``test`` scores the test split after the last epoch (``lossearch train``, the confirm
    stage); a search trial leaves it False.

    The run lives at ``storage_path/name``; building the trainer again with the same pair
    resumes from its latest checkpoint (Train V2 keeps a checkpoint-manager snapshot there).
    """
    from ray.train import (
        CheckpointConfig,
        FailureConfig,
        LoggingConfig,
        RunConfig,
        ScalingConfig,
    )

    use_fast_polling()
    sc = cfg.scaling
    resources = {"CPU": sc.cpus_per_worker}
    if sc.use_gpu:
        resources["GPU"] = sc.gpus_per_worker
    return trainer_class()(
        train_loop_per_worker,
        train_loop_config={"config": cfg.to_dict(), "seeds": seeds or [cfg.seed], "test": test},
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
    import socket

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


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join ``address`` (or ``RAY_ADDRESS``), else start a local Ray; no-op when connected."""
    import os

    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None  # ray.init reads it too
    check_ray_address(address)
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    # Ray's own INFO/WARNING chatter (worker-group start-up, state-API polling without a
    # dashboard) drowns the per-epoch progress lines; keep errors only.
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "logging_config": ray.LoggingConfig(log_level="ERROR"),
    }
    keep_handlers = catching_stop_signals()  # ray.init replaces the SIGTERM handler
    if address:
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError) as err:
            raise LossearchError(f"cannot reach Ray cluster at {address}: {err}") from None
    else:
        # One machine, no autoscaler: nothing can preempt a node, so Train V2's per-run
        # PreemptionWatcher actor would only poll. Workers inherit this from the raylet.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        ray.init(num_cpus=num_cpus, **kwargs)
    if keep_handlers:
        for signum in STOP_SIGNALS:
            signal.signal(signum, on_stop_signal)


def default_run_dir(cfg: TrainConfig) -> Path:
    """``runs/<name>-<timestamp>``."""
    return Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def train(
    cfg: TrainConfig,
    out_dir: str | Path | None = None,
    address: str | None = None,
    announce: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run one training and write the run directory; returns the last epoch's metrics.

    Writes ``config.yaml`` (resolved) first, then ``metrics.jsonl`` (one object per epoch;
    the last holds ``test/<metric>``), ``checkpoint/`` (the final model, tokenizer and
    optimizer state) and ``test_predictions.seed<k>.jsonl`` (per test question) at the end.
    ``announce`` (``lossearch train`` passes ``typer.echo``) gets ``run: DIR`` once
    ``config.yaml`` is written. A stop signal (SIGINT, SIGTERM) while Ray runs raises
    :class:`~lossearch.interrupt.Interrupted` naming the command that resumes the run.
    """
    import shutil

    out = Path(out_dir) if out_dir is not None else default_run_dir(cfg)
    out = out.resolve()
    if out.exists() and not out.is_dir():
        raise LossearchError(f"--out is not a directory: {out}")
    if out.exists() and any(out.iterdir()) and not (out / "config.yaml").exists():
        raise LossearchError(f"output directory is not empty and not a lossearch run: {out}")
    from lossearch.preflight import preflight

    preflight(cfg, test=True)  # bad data, model path, lengths: one line now, not in a worker
    check_ray_address(address)
    try:
        out.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, out / "config.yaml")
    except OSError as err:
        raise LossearchError(f"cannot write run directory {out}: {err.strerror}") from None
    if announce:
        announce(f"run: {out}")
    try:
        init_ray(address)
        trainer = build_trainer(cfg, storage_path=str(out), name="ray_train", test=True)
        result = trainer.fit()
    except KeyboardInterrupt:  # SIGINT or SIGTERM under the command's catch_stop_signals
        raise interrupted(
            f"resume from the last finished epoch with: lossearch train --config "
            f"{out / 'config.yaml'} --out {out}"
        ) from None
    if result.error is not None:
        raise result.error
    reason = diverged_error(result)
    if reason:
        raise LossearchError(f"training diverged: {reason}")
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    with result.checkpoint.as_directory() as ckpt_dir:
        from lossearch.checkpointing import read_state

        _, history = read_state(ckpt_dir)
        final = out / "checkpoint"
        if final.exists():
            shutil.rmtree(final)
        shutil.copytree(ckpt_dir, final)
    for record in final.glob("test_predictions.seed*.jsonl"):
        shutil.copy2(record, out / record.name)
    (out / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    return history[-1] if history else {}


def summary_line(metrics: dict[str, Any], epochs: int | None = None) -> str:
    """``epoch 3/4  loss 0.412  exact_match 0.455 ...`` (``epoch 3`` without ``epochs``)."""
    keys = ["loss", "exact_match", "formula_iou", "test/exact_match", "tokens_per_s"]
    parts = []
    if "epoch" in metrics:
        parts.append(f"epoch {metrics['epoch']}" + (f"/{epochs}" if epochs else ""))
    for key in keys:
        if key in metrics:
            v = metrics[key]
            parts.append(f"{key} {v:.4g}" if isinstance(v, float) and math.isfinite(v) else
                         f"{key} {v}")
    return "  ".join(parts)
