"""The learning-rate schedule of a training: linear warmup, then cosine, linear or constant.

With ``W`` warmup steps and ``T`` optimizer steps in all (``W <= T``), optimizer step ``t``
(0-based) runs at ``lr · f(t)``:

    f(t) = t / W                                  for t < W (the first step at 0)
    p    = min(1, (t − W) / max(1, T − W))        after warmup
    cosine:   f(t) = ½ · (1 + cos(π · p))         from 1 down to 0 at t = T
    linear:   f(t) = 1 − p
    constant: f(t) = 1

These are the values of Hugging Face's ``get_cosine_schedule_with_warmup`` (half a cycle),
``get_linear_schedule_with_warmup`` and ``get_constant_schedule_with_warmup``. Built here
rather than through ``transformers.get_scheduler`` for two reasons: its ``"constant"``
ignores ``num_warmup_steps`` (``optim.warmup_steps`` would be silently dropped), and
importing it loads ``transformers.trainer_utils`` and, through that, ``peft``: ~0.2 s of CPU
in every trial process (issue 16).

The scheduler is a ``torch.optim.lr_scheduler.LambdaLR`` whose factor is a
``functools.partial`` of :func:`lr_factor`, so its ``state_dict`` has the layout of the one
``get_scheduler`` returned: checkpoints written before load into it.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Literal

import torch

Shape = Literal["cosine", "linear", "constant"]
SHAPES: tuple[Shape, ...] = ("cosine", "linear", "constant")


def _check_shape(shape: str) -> None:
    if shape not in SHAPES:
        raise ValueError(f"unknown LR schedule {shape!r} (one of {', '.join(SHAPES)})")


def lr_factor(step: int, *, shape: Shape, warmup_steps: int, total_steps: int) -> float:
    """``f(step)``, the multiple of the base learning rate at optimizer step ``step``
    (0-based), as in the module docstring."""
    if step < warmup_steps:
        return step / warmup_steps
    _check_shape(shape)
    if shape == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress  # linear


def build_scheduler(
    optimizer: torch.optim.Optimizer, shape: Shape, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule of ``optimizer``: ``min(warmup_steps, total_steps)`` warmup steps, then
    ``shape`` until ``total_steps``. Call its ``step()`` after each optimizer step."""
    _check_shape(shape)  # here too: during warmup lr_factor returns before it checks
    factor = partial(
        lr_factor,
        shape=shape,
        warmup_steps=min(warmup_steps, total_steps),
        total_steps=total_steps,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
