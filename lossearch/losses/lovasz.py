"""Lovász-softmax loss, tokens as pixels, vectorised over the present classes."""

from __future__ import annotations

import torch
from torch import Tensor

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


def lovasz_from_log_probs(log_probs: Tensor, target: Tensor, classes: str = "present") -> Tensor:
    """Lovász-softmax from precomputed log-probs of the kept tokens; see
    :func:`lovasz_softmax_loss`."""
    F.check_classes(classes)
    n, v = log_probs.shape
    if n == 0:
        return F.zero_loss(log_probs)
    present, inverse, counts = F.present_classes(target)
    c = present.numel()
    # probabilities of the present classes only, one row per class: [C, N]
    probs = log_probs.index_select(1, present).t().contiguous().exp()
    rows = torch.arange(c, device=target.device).unsqueeze(1)
    fg = inverse.unsqueeze(0) == rows
    errors = torch.where(fg, 1.0 - probs, probs)  # |1[t = c] - p_c|
    errors_sorted, order = torch.sort(errors, dim=1, descending=True)
    with torch.no_grad():
        grad = _jaccard_grad(inverse[order] == rows, counts, errors.dtype)
    total = (errors_sorted * grad).sum()
    if classes == "present":
        return total / c
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
