"""Lovász-softmax loss, tokens as pixels, vectorised over the present classes."""

from __future__ import annotations

import torch
from torch import Tensor

try:
    import numpy as _np
except ImportError:  # pragma: no cover - numpy comes with pandas, a dependency
    _np = None

from lossearch.losses import _functional as F


def _jaccard_grad(fg_sorted: Tensor, counts: Tensor, dtype: torch.dtype) -> Tensor:
    """Gradient of the Lovász extension of the Jaccard loss, one row per class.

    ``fg_sorted [C, N]`` is the foreground indicator of each class in the order of its
    errors sorted descending; ``counts [C]`` the number of foreground tokens ``G``. With
    ``f`` the foreground and ``b`` the background tokens seen up to and including position
    ``k``, the Jaccard loss there is ``J_k = 1 - (G - f) / (G + b)``; its increment is
    ``1 / (G + b)`` at a foreground and ``(G - f) / ((G + b - 1)(G + b))`` at a background
    position. That closed form equals Berman's ``J[1:] - J[:-1]`` without the subtraction.
    Requires ``G >= 1``.
    """
    n = fg_sorted.shape[1]
    g = counts.to(dtype).unsqueeze(1)
    f = fg_sorted.cumsum(1, dtype=dtype)
    position = torch.arange(1, n + 1, dtype=dtype, device=fg_sorted.device)
    u = (position + g).sub_(f)  # G + b
    bg_step = f.neg_().add_(g).div_(u).div_(u - 1)  # (G - f) / (u (u - 1)), reuses f
    return torch.where(fg_sorted, u.reciprocal_(), bg_step)


def _argsort_rows(keys: Tensor) -> Tensor:
    """Ascending argsort of each row of a contiguous ``[C, N]`` tensor.

    On CPU this uses NumPy's SIMD argsort (x86-simd-sort), several times faster than
    ``torch.argsort`` on the same core; elsewhere ``torch.argsort``. The order of ties is
    unspecified, which does not change the Lovász extension's value.
    """
    if _np is not None and keys.device.type == "cpu":
        return torch.from_numpy(_np.argsort(keys.numpy(), axis=1))
    return torch.argsort(keys, dim=1)


class _LovaszPresent(torch.autograd.Function):
    """Sum over the present classes of the per-class Lovász-softmax losses.

    Input: log-probs of the present classes ``[N, C]``, the class index of each token among
    the present classes ``[N]`` and the class counts ``[C]``. The loss is piecewise linear
    in the probabilities, ``sum_c sum_n |1[t_n = c] - p_nc| w_nc`` with ``w`` the Jaccard
    gradient put back in token order, so its gradient is computed with the forward pass; the
    sort runs once, without autograd.
    """

    @staticmethod
    def forward(ctx, log_probs_present: Tensor, inverse: Tensor, counts: Tensor) -> Tensor:
        probs = log_probs_present.exp()  # [N, C]
        c = probs.shape[1]
        rows = torch.arange(c, device=inverse.device).unsqueeze(1)
        fg = inverse.unsqueeze(0) == rows  # [C, N] foreground indicator
        p = probs.t().clone(memory_format=torch.contiguous_format)  # [C, N], a copy
        fg_neg_errors = p - 1.0
        neg_errors = torch.where(fg, fg_neg_errors, p.neg_())  # -|1[t = c] - p_c|
        del fg_neg_errors
        order = _argsort_rows(neg_errors)  # errors in decreasing order
        grad_sorted = _jaccard_grad(fg.gather(1, order), counts, probs.dtype)
        weight = torch.empty_like(grad_sorted).scatter_(1, order, grad_sorted)  # token order
        total = -torch.dot(neg_errors.view(-1), weight.view(-1))
        # d total / d log p = (d|1[t = c] - p| / dp) w p, the sign -1 on the foreground
        weight = torch.where(fg, weight.neg(), weight).t().contiguous()  # [N, C]
        ctx.save_for_backward(probs.mul_(weight))
        return total

    @staticmethod
    def backward(ctx, grad_total: Tensor) -> tuple[Tensor, None, None]:
        (grad,) = ctx.saved_tensors
        return grad * grad_total, None, None


def lovasz_from_log_probs(log_probs: Tensor, target: Tensor, classes: str = "present") -> Tensor:
    """Lovász-softmax from precomputed log-probs of the kept tokens; see
    :func:`lovasz_softmax_loss`."""
    F.check_classes(classes)
    n, v = log_probs.shape
    if n == 0:
        return F.zero_loss(log_probs)
    present, inverse, counts = F.present_classes(target)
    total = _LovaszPresent.apply(log_probs.index_select(1, present), inverse, counts)
    if classes == "present":
        return total / present.numel()
    # an absent class has G = 0: its Jaccard gradient is [1, 0, 0, ...], so its loss is
    # the largest error, max_n p_nc = exp(max_n log p_nc); one column-max over [N, V]
    col_max = log_probs.amax(0).exp()
    return (total + F.absent_sum(col_max, present)) / v


def lovasz_softmax_loss(
    logits: Tensor, target: Tensor, classes: str = "present", ignore_index: int = -100
) -> Tensor:
    """Lovász-softmax loss with tokens in place of pixels.

    For each class ``c`` the errors ``|1[t = c] - p_c|`` of all tokens are sorted in
    decreasing order and dotted with the gradient of the Lovász extension of the Jaccard
    loss; the result is averaged over classes.

    Cost. ``"present"``: one vectorised sort over a ``[C, N]`` matrix, ``C`` the number of
    distinct targets (``C <= min(N, V)``); no ``[N, V]`` temporary beyond the log-softmax
    and no loop over classes. ``"all"``: additionally one column max over the ``[N, V]``
    log-probs (an absent class's loss is its largest probability, so absent classes need no
    sort); its backward writes one more ``[N, V]`` gradient.

    Args:
        logits: unnormalised scores, any float dtype (computed in float32; float64 kept).
        target: class index per token; tokens equal to ``ignore_index`` are dropped.
        classes: ``"present"`` (default) averages over the classes that occur in the kept
            targets; ``"all"`` over all ``V`` classes.
        ignore_index: target value of tokens that do not count. Default -100.

    Shape:
        - logits: ``[N, V]``
        - target: ``[N]``
        - output: scalar; 0 when every token is ignored.

    Reference:
        Berman, Rannen Triki, Blaschko. "The Lovász-Softmax loss: A tractable surrogate for
        the optimization of the intersection-over-union measure in neural networks",
        CVPR 2018. https://arxiv.org/abs/1705.08790
    """
    F.check_classes(classes)
    log_probs, target = F.prepare(logits, target, ignore_index)
    return lovasz_from_log_probs(log_probs, target, classes=classes)
