"""Helpers shared by every loss: input checks, dropping ignored tokens, float32 log-softmax.

Every public loss follows the same two steps:

1. :func:`prepare` checks the shapes, *drops* the tokens whose target is ``ignore_index``
   (they are removed, not zeroed and mapped to class 0) and computes the log-softmax over
   the vocabulary in float32 (float64 inputs stay float64, so ``gradcheck`` works).
2. The loss's ``*_from_log_probs`` entry point takes those log-probs ``[N, V]`` of the kept
   tokens and their targets ``[N]`` and returns the scalar.

:class:`~lossearch.losses.composite.CompositeLoss` calls step 1 once per training step and
hands the same log-probs to every component.
"""

from __future__ import annotations

import torch
from torch import Tensor

CLASS_MODES = ("present", "all")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16/bfloat16/float32 -> float32; float64 stays float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_inputs(logits: Tensor, target: Tensor) -> None:
    """Raise ``ValueError`` unless ``logits`` is ``[N, V]`` float and ``target`` is ``[N]`` int."""
    if logits.dim() != 2:
        raise ValueError(f"logits must be [N, V], got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a float tensor, got {logits.dtype}")
    if target.dim() != 1 or target.shape[0] != logits.shape[0]:
        raise ValueError(
            f"target must be [N] with N = {logits.shape[0]}, got shape {tuple(target.shape)}"
        )
    if target.is_floating_point() or target.dtype == torch.bool:
        raise ValueError(f"target must be an integer tensor, got {target.dtype}")


def check_classes(classes: str) -> None:
    if classes not in CLASS_MODES:
        raise ValueError(f"classes must be 'present' or 'all', got {classes!r}")


def drop_ignored(logits: Tensor, target: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """Keep only the rows whose target is not ``ignore_index`` (no copy when none is ignored)."""
    keep = target != ignore_index
    if bool(keep.all()):
        return logits, target.long()
    return logits[keep], target[keep].long()


def log_softmax(logits: Tensor) -> Tensor:
    """Log-softmax over the last dimension, computed in float32 (float64 kept)."""
    return torch.log_softmax(logits.to(compute_dtype(logits.dtype)), dim=-1)


def prepare(logits: Tensor, target: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """Check shapes, drop ignored tokens, return ``(log_probs [N, V], target [N])``."""
    check_inputs(logits, target)
    kept_logits, kept_target = drop_ignored(logits, target, ignore_index)
    return log_softmax(kept_logits), kept_target


def zero_loss(log_probs: Tensor) -> Tensor:
    """A scalar 0 that is still connected to the graph (gradient 0), for an empty batch."""
    return log_probs.sum() * 0.0


def target_log_probs(log_probs: Tensor, target: Tensor) -> Tensor:
    """``log p_t`` for each token: ``[N, V], [N] -> [N]``."""
    return log_probs.gather(1, target.unsqueeze(1)).squeeze(1)


def one_minus_p(log_p: Tensor, floor: float = 0.0) -> Tensor:
    """``1 - exp(log_p)`` without cancellation; with ``floor > 0`` clamped below at ``floor``.

    The floor keeps ``(1 - p) ** a`` with ``a < 1`` differentiable where ``p`` rounds to 1
    (the clamp passes no gradient there instead of ``inf * 0 = nan``).
    """
    out = -torch.expm1(log_p)
    return out.clamp_min(floor) if floor > 0 else out


def tiny(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).tiny


def present_classes(target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(classes [C], inverse [N], counts [C])``: the distinct targets, sorted ascending."""
    return torch.unique(target, sorted=True, return_inverse=True, return_counts=True)


def class_sums(values: Tensor, index: Tensor, size: int) -> Tensor:
    """``out[c] = sum of values[n] over n with index[n] == c`` (no one-hot)."""
    return values.new_zeros(size).index_add(0, index, values)


def absent_sum(per_class: Tensor, present: Tensor) -> Tensor:
    """Sum of ``per_class [V]`` over the classes not in ``present`` (masked, no cancellation)."""
    return per_class.index_fill(0, present, 0.0).sum()
