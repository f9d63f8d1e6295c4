"""``train_epoch`` without Ray: accumulation groups, DDP's ``no_sync`` and mixed precision.

Each test builds a replica as ``build_replica`` does minus ``prepare_model`` (the tiny model,
AdamW, the schedule, the fp16 scaler) and calls ``train_epoch`` on a small ``arith``.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from lossearch.config import TrainConfig, load_config
from lossearch.fit import (
    Replica,
    accumulation_groups,
    autocast_dtype,
    build_optimizer,
    make_scaler,
    plan_steps,
    train_epoch,
)

CPU = torch.device("cpu")
SMALL = {"task.arith_train_size": 200, "task.val_size": 20, "optim.warmup_steps": 0}


def _setup(cfg: TrainConfig, wrap: Any = None) -> tuple[Replica, list, Any, int, int]:
    """``(replica, features, loss_fn, steps_per_epoch, total_steps)`` for ``cfg`` on CPU."""
    from lossearch.losses import build_loss
    from lossearch.models import load_model_and_tokenizer
    from lossearch.tasks import load_task, tokenize

    data = load_task(cfg.task)
    steps_per_epoch, total_steps, _ = plan_steps(len(data.train), cfg)
    model, tok = load_model_and_tokenizer(cfg.model, seed=cfg.seed)
    if wrap is not None:
        model = wrap(model)
    optimizer, scheduler = build_optimizer(cfg, model, total_steps)
    rep = Replica(cfg.seed, model, tok, optimizer, scheduler, scaler=make_scaler(cfg, CPU))
    features, _ = tokenize(data.train, tok, cfg.task.max_length)
    return rep, features, build_loss(cfg.loss), steps_per_epoch, total_steps


def _optimizer_steps(rep: Replica) -> int:
    steps = {int(s["step"]) for s in rep.optimizer.state.values()}
    assert len(steps) <= 1, steps
    return steps.pop() if steps else 0


def test_leftover_micro_batches_are_not_trained_and_leave_no_gradient() -> None:
    """200 examples / 16 = 12 micro-batches = 2 steps of 5 + 2 left over (issue 14.1)."""
    cfg = load_config(overrides={**SMALL, "optim.batch_size": 16, "optim.grad_accum": 5})
    rep, features, loss_fn, steps_per_epoch, total = _setup(cfg)
    assert (len(features) // 16) % 5 != 0  # there are leftover micro-batches
    train_epoch(rep, features, loss_fn, cfg, 1, CPU, 0, 1, total)
    assert _optimizer_steps(rep) == steps_per_epoch == 2
    assert all(p.grad is None for p in rep.model.parameters())
    train_epoch(rep, features, loss_fn, cfg, 2, CPU, 0, 1, total - steps_per_epoch)
    assert _optimizer_steps(rep) == 2 * steps_per_epoch
    assert rep.scheduler.last_epoch == 2 * steps_per_epoch


def test_accumulation_groups_are_whole_and_capped() -> None:
    batches = [[i] for i in range(7)]
    assert accumulation_groups(batches, 3, 10) == [[[0], [1], [2]], [[3], [4], [5]]]
    assert accumulation_groups(batches, 3, 1) == [[[0], [1], [2]]]
    assert accumulation_groups(batches, 1, 10) == [[[i]] for i in range(7)]


@pytest.fixture
def gloo_group():
    """A one-process gloo group, so that ``DistributedDataParallel`` runs in this process."""
    import torch.distributed as dist

    from tests.procs import free_port

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1
    )
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("accum", [1, 3])
def test_ddp_all_reduces_once_per_accumulation_group(gloo_group: None, accum: int) -> None:
    """Under DDP the micro-batches before a group's last one run in ``no_sync`` (issue 14.2);
    without accumulation every micro-batch is a group's last, so every one all-reduces."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from torch.nn.parallel import DistributedDataParallel

    cfg = load_config(overrides={**SMALL, "optim.batch_size": 16, "optim.grad_accum": accum})
    rep, features, loss_fn, steps_per_epoch, total = _setup(cfg, wrap=DistributedDataParallel)
    synced: list[int] = []

    def counting_hook(state, bucket):  # no annotations: DDP checks them (and they are strings)
        if bucket.index() == 0:  # every all-reducing backward reduces bucket 0 once
            synced.append(1)
        return allreduce_hook(state, bucket)

    rep.model.register_comm_hook(None, counting_hook)
    train_epoch(rep, features, loss_fn, cfg, 1, CPU, 0, 1, total)
    assert steps_per_epoch == 12 // accum  # 12 micro-batches
    assert len(synced) == steps_per_epoch
    assert _optimizer_steps(rep) == steps_per_epoch


def test_mixed_precision_default_is_bf16_on_cuda_only() -> None:
    cfg = load_config()
    assert cfg.optim.mixed_precision == "auto"
    assert autocast_dtype(cfg, CPU) is None
    assert autocast_dtype(cfg, torch.device("cuda")) == torch.bfloat16
    fp16 = load_config(overrides={"optim.mixed_precision": "fp16"})
    assert autocast_dtype(fp16, CPU) == torch.float16 and make_scaler(fp16, CPU) is not None
    assert make_scaler(load_config(overrides={"optim.mixed_precision": "bf16"}), CPU) is None


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_on_cpu(precision: str, tmp_path: Any) -> None:
    """Two epochs of 6 steps under CPU autocast: finite, falling loss; fp16 scaler saved.

    (fp16 matmuls are slow on CPU, about 15x bf16's: hence the small batches.)
    """
    from lossearch.checkpointing import restore_replica, write_checkpoint

    cfg = load_config(overrides={
        **SMALL, "task.arith_train_size": 96, "optim.batch_size": 16,
        "optim.mixed_precision": precision, "optim.lr": 5e-3, "optim.epochs": 2,
    })
    rep, features, loss_fn, steps_per_epoch, total = _setup(cfg)
    losses = [
        train_epoch(rep, features, loss_fn, cfg, e, CPU, 0, 1, total)["loss"] for e in (1, 2)
    ]
    assert all(math.isfinite(v) for v in losses), losses
    assert losses[-1] < losses[0], losses
    assert all(torch.isfinite(p).all() for p in rep.model.parameters())
    if precision == "bf16":
        assert rep.scaler is None
        return
    assert rep.scaler is not None and math.isfinite(rep.scaler.get_scale())
    assert _optimizer_steps(rep) > 0  # the scaler did not skip every step
    write_checkpoint(tmp_path, 3, [], [rep])
    fresh, *_ = _setup(cfg)
    restore_replica(tmp_path, fresh)
    assert fresh.scaler.state_dict() == rep.scaler.state_dict()
