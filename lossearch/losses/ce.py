"""Token cross-entropy, optionally with label smoothing."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from lossearch.losses import _functional as F


def check_label_smoothing(label_smoothing: float) -> None:
    """Raise ``ValueError`` unless ``0 <= label_smoothing < 1``."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")


class _SmoothedNLL(torch.autograd.Function):
    """``-(1/N) sum_n [(1 - eps) lp[n, t_n] + (eps / V) sum_c lp[n, c]]`` for log-probs ``lp``.

    Autograd of the plain expression would build the gather's ``[N, V]`` gradient and then
    add the smoothing term's broadcast gradient to it, one more pass over ``[N, V]``. The
    gradient is a constant ``-eps / (N V)`` everywhere plus ``-(1 - eps) / N`` at the
    targets, so backward writes it in one fill and one scatter, as CE's gather does.
    """

    @staticmethod
    def forward(ctx: Any, log_probs: Tensor, target: Tensor, eps: float) -> Tensor:
        n, v = log_probs.shape
        ctx.save_for_backward(target)
        ctx.eps, ctx.n, ctx.v = eps, n, v
        picked = F.target_log_probs(log_probs, target).sum()
        return -((1.0 - eps) * picked + (eps / v) * log_probs.sum()) / n

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (target,) = ctx.saved_tensors
        n, v, eps = ctx.n, ctx.v, ctx.eps
        out = (grad * (-eps / (n * v))).expand(n, v).contiguous()
        at_target = (grad * (-(1.0 - eps) / n)).expand(n, 1)
        return out.scatter_add_(1, target.unsqueeze(1), at_target), None, None


def cross_entropy_from_log_probs(
    log_probs: Tensor, target: Tensor, label_smoothing: float = 0.0
) -> Tensor:
    """Mean of ``-(1 - eps) log p_t - eps mean_c log p_c`` over the kept tokens; see
    :func:`cross_entropy`."""
    if target.numel() == 0:
        return F.zero_loss(log_probs)
    if label_smoothing == 0:
        return -F.target_log_probs(log_probs, target).mean()
    return _SmoothedNLL.apply(log_probs, target, float(label_smoothing))


def cross_entropy(
    logits: Tensor, target: Tensor, ignore_index: int = -100, label_smoothing: float = 0.0
) -> Tensor:
    """Token cross-entropy, the mean over non-ignored tokens of

        ``-(1 - eps) log p_t - (eps / V) sum_c log p_c``,   ``p = softmax(logits)``,

    i.e. CE against the target distribution ``(1 - eps) onehot(t) + eps / V`` (label
    smoothing, Szegedy et al. 2016). ``eps = 0`` (the default) is plain token CE.

    Args:
        logits: unnormalised scores, any float dtype (computed in float32; float64 kept).
        target: class index per token; tokens equal to ``ignore_index`` are dropped.
        ignore_index: target value of tokens that do not count. Default -100.
        label_smoothing: ``eps`` in ``[0, 1)``, the probability mass spread uniformly over
            all ``V`` classes (the target class included). Default 0.0. Costs one extra
            read of the ``[N, V]`` log-probs when ``> 0`` (their sum); the backward pass
            costs what CE's does.

    Shape:
        - logits: ``[N, V]``
        - target: ``[N]``
        - output: scalar (float32, or float64 for float64 logits); 0 (with zero gradient)
          when every token is ignored.

    Reference:
        Equal to ``torch.nn.functional.cross_entropy(logits, target, ignore_index=...,
        label_smoothing=...)`` (mean reduction: ignored tokens count in neither the sum
        nor the divisor). Szegedy, Vanhoucke, Ioffe, Shlens, Wojna. "Rethinking the
        Inception Architecture for Computer Vision", CVPR 2016.
        https://arxiv.org/abs/1512.00567
    """
    check_label_smoothing(label_smoothing)
    log_probs, target = F.prepare(logits, target, ignore_index)
    return cross_entropy_from_log_probs(log_probs, target, label_smoothing=label_smoothing)
