"""The training loop without Ray: :func:`fit` trains one configuration and reports each epoch.

:func:`fit` reads top to bottom::

    build task data, loss, and one replica (model, optimizer, schedule) per seed
    resume from a checkpoint folder, if one is given
    for epoch:
        for each replica: for batch: composite loss, backward, clip, step
        evaluate by greedy generation on rank 0 (and the test split after the last epoch)
        report(metrics, checkpoint folder)

Plain PyTorch: the caller decides where it runs and where reports go. A search trial with
one worker calls it inside its Ray Tune trial (``lossearch.search.trial``), Ray Train's
per-worker function calls it with the worker's rank, device and ``prepare_model``
(``lossearch.ray_train``), and ``benchmarks/`` call it with no Ray at all.

Several seeds in one run share the data: each seed has its own model and optimizer, they
train in turn within an epoch, and the reported metric is the mean over seeds (each seed's
own values are also reported as ``seed<k>/<metric>``). Under data parallelism each global
batch of ``optim.batch_size * world`` examples is split across ranks (:func:`epoch_batches`).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lossearch.checkpointing import record_name
from lossearch.config import TrainConfig
from lossearch.errors import NonFiniteLoss
from lossearch.metrics import summary_line
from lossearch.steps import plan_steps

Report = Callable[[dict[str, Any], "str | None"], None]
"""``report(metrics, checkpoint_dir)``: one call per epoch on every rank. ``checkpoint_dir``
is a folder holding the epoch's checkpoint (rank 0; valid only during the call), else None."""


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


def build_optimizer(cfg: TrainConfig, model: Any, total_steps: int) -> tuple[Any, Any]:
    """AdamW over the trainable weights and the warmup + ``optim.scheduler`` LR schedule
    (:mod:`lossearch.lr_schedule`)."""
    from lossearch.lr_schedule import build_scheduler

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    scheduler = build_scheduler(
        optimizer, cfg.optim.scheduler, cfg.optim.warmup_steps, total_steps
    )
    return optimizer, scheduler


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
    the same epoch, and the step count is :func:`~lossearch.steps.plan_steps`'s ``steps_per_epoch``.
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



# --------------------------------------------------------------------------- building


def build_replica(
    cfg: TrainConfig, seed: int, total_steps: int, device: torch.device, prepare: Callable
) -> Replica:
    """Model + tokenizer from ``cfg.model`` passed through ``prepare``, optimizer, schedule.

    ``prepare`` places the model: ``.to(device)`` without Ray, ``ray.train.torch.
    prepare_model`` (device and DDP) under Ray Train.
    """
    from lossearch.models import load_model_and_tokenizer

    torch.manual_seed(seed)
    model, tokenizer = load_model_and_tokenizer(cfg.model, seed=seed)
    model = prepare(model)
    optimizer, scheduler = build_optimizer(cfg, model, total_steps)
    return Replica(seed, model, tokenizer, optimizer, scheduler, scaler=make_scaler(cfg, device))


def default_device(cfg: TrainConfig) -> torch.device:
    """CUDA when ``scaling.use_gpu`` asks for it and one is visible, else the CPU."""
    if cfg.scaling.use_gpu and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def quiet_libraries() -> None:
    """No Hugging Face progress bars or info messages in a training's output."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


# --------------------------------------------------------------------------- the loop


def fit(
    cfg: TrainConfig,
    report: Report,
    *,
    seeds: Sequence[int] | None = None,
    test: bool = False,
    resume_from: str | Path | None = None,
    rank: int = 0,
    world: int = 1,
    device: torch.device | None = None,
    prepare_model: Callable[[Any], Any] | None = None,
    tags: Mapping[str, str] | None = None,
    echo: bool = True,
) -> list[dict[str, Any]]:
    """Train ``cfg`` for each of ``seeds`` (default ``[cfg.seed]``); returns the history.

    Every epoch ends with ``report(metrics, checkpoint_dir)`` (see :data:`Report`):
    ``metrics`` holds ``epoch``, the training loss and its components, the validation
    metrics (every ``eval.every_epochs`` and at the last epoch, scored on rank 0), each as
    the mean over seeds plus ``seed<k>/`` copies, ``worker_pid`` and ``tags`` (strings, so
    analysis does not take them for metrics). With ``test`` the test split is scored after
    the last epoch (``test/<metric>``, and each seed's per-question record
    :func:`record_name` in the final checkpoint); without it the test split is not loaded.

    ``resume_from`` is a checkpoint folder (``lossearch.checkpointing``): training goes on
    from the epoch after it. A checkpoint of the whole schedule reports its last epoch again
    (a restarted trial must end with a result) and returns. ``rank``/``world``/``device``/
    ``prepare_model`` place this process in a data-parallel group (defaults: one process,
    :func:`default_device`, ``.to(device)``). Raises :class:`NonFiniteLoss` at the first
    NaN or infinite loss. ``echo`` prints each epoch's :func:`summary_line` on rank 0
    (``[lossearch] epoch 2/3  loss ...``); search and confirm trials turn it off, their
    driver prints the line with the trial's name (``lossearch.search.progress``).
    """
    from lossearch.checkpointing import read_state, restore_replica, write_checkpoint
    from lossearch.losses import build_loss
    from lossearch.tasks import load_task, tokenize

    quiet_libraries()
    seeds = list(seeds or [cfg.seed])
    device = device or default_device(cfg)
    prepare = prepare_model or (lambda model: model.to(device))
    torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))

    data = load_task(cfg.task, test=test)
    loss_fn = build_loss(cfg.loss)
    steps_per_epoch, total_steps, epochs = plan_steps(len(data.train), cfg, world)
    replicas = [build_replica(cfg, seed, total_steps, device, prepare) for seed in seeds]
    features, _ = tokenize(data.train, replicas[0].tokenizer, cfg.task.max_length)

    start_epoch, history = 1, []
    if resume_from is not None:
        state, history = read_state(resume_from)
        for rep in replicas:
            restore_replica(resume_from, rep)
        start_epoch = state["epoch"] + 1
    if start_epoch > epochs and history:
        report(history[-1], None)
        return history

    for epoch in range(start_epoch, epochs + 1):
        step_cap = total_steps - (epoch - 1) * steps_per_epoch
        per_seed = {
            rep.seed: train_epoch(rep, features, loss_fn, cfg, epoch, device, rank, world, step_cap)
            for rep in replicas
        }
        test_rows: dict[int, list[dict[str, Any]]] = {}
        if rank == 0 and (epoch % cfg.eval.every_epochs == 0 or epoch == epochs):
            for rep in replicas:
                per_seed[rep.seed].update(evaluate(rep, data, cfg, device))
                if test and epoch == epochs:
                    means, test_rows[rep.seed] = evaluate_test(rep, data, cfg, device)
                    per_seed[rep.seed].update(means)
        metrics = {"epoch": epoch, **mean_over_seeds(per_seed)}
        metrics.update({**(tags or {}), "worker_pid": str(os.getpid())})
        history.append(metrics)
        if rank != 0:
            report(metrics, None)
            continue
        if echo:  # sys.stdout, not print: Ray Train patches print to also log (twice)
            sys.stdout.write(f"[lossearch] {summary_line(metrics, epochs)}\n")
            sys.stdout.flush()
        with tempfile.TemporaryDirectory() as tmp:
            write_checkpoint(tmp, epoch, history, replicas)
            for seed, rows in test_rows.items():
                Path(tmp, record_name(seed)).write_text("".join(json.dumps(r) + "\n" for r in rows))
            report(metrics, tmp)
    return history


def fit_in_run(cfg: TrainConfig, run: str, report: Report, **fit_kwargs: Any) -> None:
    """:func:`fit` whose checkpoints live in the run folder ``run`` (a path or URI).

    Training resumes from the run's latest checkpoint (``checkpointing.latest_in_run``);
    each epoch's checkpoint is saved there (``checkpointing.save_to_run``) before
    ``report(metrics, checkpoint_dir)`` is called. ``fit_kwargs`` go to :func:`fit`
    (``seeds``, ``test``, ``tags``, ...). Raises :class:`NonFiniteLoss` as :func:`fit` does.
    """
    from lossearch.checkpointing import latest_in_run, save_to_run

    def save_then_report(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        if checkpoint_dir is not None:
            save_to_run(run, checkpoint_dir, int(metrics["epoch"]))
        report(metrics, checkpoint_dir)

    with latest_in_run(run) as resume_from:
        fit(cfg, save_then_report, resume_from=resume_from, **fit_kwargs)
