"""How many optimizer steps a training config makes of its training examples (no torch: the
driver's :mod:`lossearch.preflight` counts them too, before anything starts)."""

from __future__ import annotations

import math

from lossearch.config import TrainConfig
from lossearch.errors import LossearchError


def plan_steps(n_train: int, cfg: TrainConfig, world: int = 1) -> tuple[int, int, int]:
    """``(steps_per_epoch, total_steps, epochs)`` in optimizer steps for ``n_train`` examples.

    A step consumes ``batch_size * world * grad_accum`` examples; ``optim.max_steps`` caps
    the total, which can end training inside an epoch (``epochs`` rounds up).
    ``steps_per_epoch`` is exactly what :func:`lossearch.fit.train_epoch` steps: the whole
    accumulation groups among the epoch's micro-batches
    (:func:`lossearch.fit.accumulation_groups`).
    """
    steps_per_epoch = n_train // (cfg.optim.batch_size * world) // cfg.optim.grad_accum
    if steps_per_epoch < 1:
        raise LossearchError(
            f"{n_train} training examples are fewer than one optimizer step "
            f"({cfg.optim.batch_size} x {world} workers x {cfg.optim.grad_accum} accumulation)"
        )
    total_steps = min(cfg.optim.max_steps or 10**12, steps_per_epoch * cfg.optim.epochs)
    return steps_per_epoch, total_steps, math.ceil(total_steps / steps_per_epoch)
